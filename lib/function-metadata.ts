import * as path from 'node:path';
import { fileURLToPath } from 'node:url';

// What the CDK side (`HubFunction`) and the local hub share about a function, in a module of its own
// so that the local hub reads a template without loading aws-cdk-lib (a warm start never synthesizes).

/** Repository root, from which handler entries are resolved. */
export const PROJECT_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');

/**
 * Template metadata key that records a function's handler source, relative to the project root.
 * The local hub reads it to run the same module the bundle was built from.
 */
export const ENTRY_METADATA_KEY = 'serverless-iot-hub:entry';
/**
 * Template metadata key that records a function's `HubFunctionProps.files` (`{ name: content }`).
 * The cloud bundle carries the files; the local hub, when it runs a function's source (a template
 * synthesized without bundling), writes them from here.
 */
export const FILES_METADATA_KEY = 'serverless-iot-hub:files';
