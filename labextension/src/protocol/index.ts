/**
 * The kernel↔extension protocol: types, constants and schema generated from
 * lmchat_jupyter/protocol/messages.schema.json, and the check of what arrives.
 */
export * from './generated';
export { is } from './validate';
