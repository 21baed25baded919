// plugboard.ts: the Plugboard WASM plugin ABI, version 1, for AssemblyScript (sdk/ABI.md is
// the reference). Import what a plugin uses and re-export the boilerplate exports:
//
//   export { plugboard_abi_version, plugboard_alloc, plugboard_init } from "<sdk>/assemblyscript/plugboard";
//   export function plugboard_hooks(): i32 { return HOOK_SELECT; }
//
// Build: asc plugin.ts --outFile plugin.wasm -O3 --use abort= (no "env" imports: the host
// provides only module "plugboard"). One instance runs per service and worker thread, so
// globals are per thread; the shared_* functions reach data all threads share.

export const HOOK_SELECT: i32 = 1;
export const HOOK_KEY: i32 = 2;
export const HOOK_HEALTH: i32 = 4;

// Request fields (request_get). PATH has no query string (that is QUERY).
export const SERVICE: i32 = 0;
export const CLIENT_IP: i32 = 2;
export const METHOD: i32 = 5;
export const PATH: i32 = 6;
export const HOST: i32 = 7;
export const QUERY: i32 = 9;

// Backend properties (backend_get).
export const WEIGHT: i32 = 0;
export const ACTIVE: i32 = 1;
export const AVAILABLE: i32 = 3;

@external("plugboard", "request_get")
export declare function request_get(field: i32, buf: usize, cap: i32): i32;
@external("plugboard", "request_header")
export declare function request_header(name: usize, name_len: i32, buf: usize, cap: i32): i32;
@external("plugboard", "backend_count")
export declare function backend_count(): i32;
// A backend property; -1 for a bad index. Indexes are 0-based.
@external("plugboard", "backend_get")
export declare function backend_get(index: i32, prop: i32): i64;
@external("plugboard", "log")
export declare function log(level: i32, ptr: usize, len: i32): void;
// Shared counter 0-63: adds delta (wrapping), returns the previous value.
@external("plugboard", "shared_counter_add")
export declare function shared_counter_add(counter: i32, delta: i64): i64;
// Key-value store: keys up to 256 bytes, values up to 4096, at most 1024 entries.
@external("plugboard", "shared_get")
export declare function shared_get(key: usize, key_len: i32, buf: usize, cap: i32): i32;
@external("plugboard", "shared_set")
export declare function shared_set(key: usize, key_len: i32, value: usize, value_len: i32): i32;

export function plugboard_abi_version(): i32 {
  return 1;
}

// The settings are written here as JSON; this module ignores them and frees the buffer.
export function plugboard_alloc(len: i32): usize {
  return heap.alloc(<usize>len);
}

export function plugboard_init(ptr: usize, len: i32): i32 {
  heap.free(ptr);
  return 0;
}

const FIELD = new StaticArray<u8>(256);

// Whether request field `field` starts with `prefix` (ASCII), allocating nothing.
export function fieldStartsWith(field: i32, prefix: string): bool {
  const n = request_get(field, changetype<usize>(FIELD), FIELD.length);
  if (n < prefix.length || prefix.length > FIELD.length) return false;
  for (let i = 0; i < prefix.length; i++) {
    if (<i32>FIELD[i] != prefix.charCodeAt(i)) return false;
  }
  return true;
}
