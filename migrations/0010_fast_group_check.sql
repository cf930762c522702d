-- The outbox's group check, unchanged in what it accepts, as PL/pgSQL. The SQL version (0005) has a
-- subquery, so PostgreSQL cannot inline it and plans its body again in every statement that inserts an
-- outbox row: about 0.1 ms per event on the benchmark machine, a large part of what an event costs its
-- writer. PL/pgSQL keeps its plans for the session (about 0.01 ms per call).
CREATE OR REPLACE FUNCTION ss_valid_groups(groups text[]) RETURNS boolean
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
DECLARE
    lo integer := array_lower(groups, 1);
    hi integer := array_upper(groups, 1);
BEGIN
    IF groups IS NULL OR array_ndims(groups) IS DISTINCT FROM 1 OR cardinality(groups) NOT BETWEEN 1 AND 32 THEN
        RETURN false;
    END IF;
    FOR i IN lo .. hi LOOP
        IF groups[i] IS NULL                                         -- no NULLs
           OR groups[i] !~ '^[a-z0-9][a-z0-9:_-]{0,63}$'
           OR (i < hi AND array_position(groups, groups[i], i + 1) IS NOT NULL) THEN  -- no repeats
            RETURN false;
        END IF;
    END LOOP;
    RETURN true;
END
$$;
COMMENT ON FUNCTION ss_valid_groups(text[]) IS
    'True when there are 1 to 32 distinct group keys, each matching ^[a-z0-9][a-z0-9:_-]{0,63}$.';
