// /admin to the first backend; everything else round robin across the others, one
// rotation for all worker threads (shared counter 0).
import { AVAILABLE, PATH, backend_get, fieldStartsWith, shared_counter_add } from "../../../sdk/assemblyscript/plugboard";
export { plugboard_abi_version, plugboard_alloc, plugboard_init } from "../../../sdk/assemblyscript/plugboard";

export function plugboard_hooks(): i32 {
  return 1;
}

export function plugboard_select_server(n: i32): i32 {
  if (fieldStartsWith(PATH, "/admin")) return 0;
  let rest = 0;
  for (let i = 1; i < n; i++) if (backend_get(i, AVAILABLE) == 1) rest++;
  if (rest == 0) return -1;
  let turn = <u64>shared_counter_add(0, 1) % <u64>rest;
  for (let i = 1; i < n; i++) if (backend_get(i, AVAILABLE) == 1 && turn-- == 0) return i;
  return -1;
}
