# Installed as sitecustomize.py into the fuzzer's virtual environment by scripts/fuzz-api.sh.
#
# CPython 3.11 before 3.11.8 (gh-106905) can raise SystemError("AST constructor recursion depth mismatch")
# from ast.parse when it is called deep in a recursion. Hypothesis parses source files to describe its
# lambdas and expects only SyntaxError there, so the CPython bug surfaced as a schemathesis "Runtime Error"
# about nothing in this project. Turned into SyntaxError, Hypothesis just describes the lambda as unknown.
import ast

_parse = ast.parse


def _parse_without_the_recursion_bug(*args, **kwargs):
    try:
        return _parse(*args, **kwargs)
    except SystemError as error:
        if "recursion depth mismatch" not in str(error):
            raise
        raise SyntaxError(str(error)) from error


ast.parse = _parse_without_the_recursion_bug
