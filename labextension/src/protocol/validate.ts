import { IDefinitions, SCHEMA } from './generated';

/** A JSON Schema, or a part of one. */
type Schema = boolean | { readonly [keyword: string]: unknown };

/**
 * Whether `data` is a valid `name`, one of the definitions of the protocol's
 * schema (lmchat_jupyter/protocol/messages.schema.json). Properties the schema
 * does not name are allowed: a newer kernel may send more.
 */
export function is<K extends keyof IDefinitions>(
  name: K,
  data: unknown
): data is IDefinitions[K] {
  return data !== undefined && matches({ $ref: `#/$defs/${name}` }, data);
}

/**
 * The part of JSON Schema 2020-12 that the schema uses. A keyword outside it
 * fails every check (`jlpm protocol:check` tells which), never passes one.
 */
const KEYWORDS: {
  [keyword: string]: (argument: any, value: unknown, schema: any) => boolean;
} = {
  $defs: () => true,
  $ref: (ref: string, value) => matches(resolve(ref), value),
  type: (types: string | string[], value) =>
    (Array.isArray(types) ? types : [types]).some(t => hasType(t, value)),
  const: (expected, value) => equal(expected, value),
  enum: (options: unknown[], value) => options.some(o => equal(o, value)),
  minimum: (limit: number, value) =>
    typeof value !== 'number' || value >= limit,
  minLength: (limit: number, value) =>
    typeof value !== 'string' || [...value].length >= limit,
  properties: (properties: { [key: string]: Schema }, value) =>
    !isObject(value) ||
    Object.entries(properties).every(
      ([key, schema]) => !has(value, key) || matches(schema, value[key])
    ),
  required: (keys: string[], value) =>
    !isObject(value) || keys.every(key => has(value, key)),
  additionalProperties: (schema: Schema, value, parent) =>
    !isObject(value) ||
    Object.entries(value).every(
      ([key, item]) =>
        has(parent.properties ?? {}, key) || matches(schema, item)
    ),
  items: (schema: Schema, value) =>
    !Array.isArray(value) || value.every(item => matches(schema, item)),
  anyOf: (schemas: Schema[], value) => schemas.some(s => matches(s, value)),
  oneOf: (schemas: Schema[], value) =>
    schemas.filter(s => matches(s, value)).length === 1
};

function matches(schema: Schema, value: unknown): boolean {
  if (typeof schema === 'boolean') {
    return schema;
  }
  return Object.entries(schema).every(([keyword, argument]) => {
    return has(KEYWORDS, keyword) && KEYWORDS[keyword](argument, value, schema);
  });
}

function resolve(ref: string): Schema {
  const prefix = '#/$defs/';
  const definitions = SCHEMA.$defs as { [name: string]: Schema };
  const name = ref.slice(prefix.length);
  return ref.startsWith(prefix) && has(definitions, name)
    ? definitions[name]
    : false;
}

function has(object: object, key: string): boolean {
  return Object.prototype.hasOwnProperty.call(object, key);
}

function isObject(value: unknown): value is { [key: string]: unknown } {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function hasType(type: string, value: unknown): boolean {
  switch (type) {
    case 'null':
      return value === null;
    case 'object':
      return isObject(value);
    case 'array':
      return Array.isArray(value);
    case 'integer':
      return Number.isInteger(value);
    case 'number':
      return typeof value === 'number' && Number.isFinite(value);
    default:
      return typeof value === type; // string, boolean
  }
}

function equal(a: unknown, b: unknown): boolean {
  if (Array.isArray(a) || Array.isArray(b)) {
    return (
      Array.isArray(a) &&
      Array.isArray(b) &&
      a.length === b.length &&
      a.every((item, i) => equal(item, b[i]))
    );
  }
  if (isObject(a) && isObject(b)) {
    const keys = Object.keys(a);
    return (
      keys.length === Object.keys(b).length &&
      keys.every(key => has(b, key) && equal(a[key], b[key]))
    );
  }
  return a === b;
}
