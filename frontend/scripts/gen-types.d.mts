export const SCHEMA_PATH: string;
export const OUTPUT_PATH: string;
export function generate(): Promise<string>;
