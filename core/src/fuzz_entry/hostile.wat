;; The hostile guest of the `wasm_abi` fuzz target (see core/src/fuzz_entry.rs): every
;; hook runs the program the persistence-key call copied from the payload to 0x8000. A step
;; is an opcode byte (modulo the 18 imports, in the order below) and that import's
;; arguments, 4 bytes little-endian each (set_agent's value sign-extended to i64).
(module
  (import "plugboard" "request_get" (func $request_get (param i32 i32 i32) (result i32)))
  (import "plugboard" "request_header" (func $request_header (param i32 i32 i32 i32) (result i32)))
  (import "plugboard" "request_cookie" (func $request_cookie (param i32 i32 i32 i32) (result i32)))
  (import "plugboard" "backend_count" (func $backend_count (result i32)))
  (import "plugboard" "backend_get" (func $backend_get (param i32 i32) (result i64)))
  (import "plugboard" "backend_address" (func $backend_address (param i32 i32 i32) (result i32)))
  (import "plugboard" "backend_name" (func $backend_name (param i32 i32 i32) (result i32)))
  (import "plugboard" "backend_cookie_id" (func $backend_cookie_id (param i32 i32 i32) (result i32)))
  (import "plugboard" "set_key" (func $set_key (param i32 i32) (result i32)))
  (import "plugboard" "set_backend" (func $set_backend (param i32) (result i32)))
  (import "plugboard" "set_load" (func $set_load (param i32) (result i32)))
  (import "plugboard" "set_agent" (func $set_agent (param i32 i64) (result i32)))
  (import "plugboard" "response_add_header" (func $response_add_header (param i32 i32 i32 i32) (result i32)))
  (import "plugboard" "log" (func $log (param i32 i32 i32)))
  (import "plugboard" "check_target" (func $check_target (param i32 i32) (result i32)))
  (import "plugboard" "tcp_exchange" (func $tcp_exchange (param i32 i32 i32 i32 i32 i32) (result i32)))
  (import "plugboard" "http_get" (func $http_get (param i32 i32 i32 i32 i32) (result i32)))
  (import "plugboard" "last_response" (func $last_response (param i32 i32) (result i32)))
  (memory (export "memory") 1)
  (global $len (mut i32) (i32.const 0))
  (global $pc (mut i32) (i32.const 0))
  (func (export "plugboard_abi_version") (result i32) (i32.const 1))
  ;; persistence-key, health-check and the response step
  (func (export "plugboard_hooks") (result i32) (i32.const 14))
  (func (export "plugboard_alloc") (param i32) (result i32) (i32.const 1024))
  (func (export "plugboard_init") (param i32 i32) (result i32) (i32.const 0))
  (func (export "plugboard_persistence_key") (result i32)
    (local $n i32)
    (local.set $n (call $request_get (i32.const 8) (i32.const 0x8000) (i32.const 0x7000)))
    (if (i32.gt_s (local.get $n) (i32.const 0x7000)) (then (local.set $n (i32.const 0x7000))))
    (if (i32.lt_s (local.get $n) (i32.const 0)) (then (local.set $n (i32.const 0))))
    (global.set $len (local.get $n))
    (call $run)
    (i32.const 0))
  (func (export "plugboard_on_response") (param i32 i32) (result i32)
    (call $run)
    (i32.const 0))
  (func (export "plugboard_health_check") (param i32) (result i32)
    (call $run)
    (i32.const 1))
  ;; The next argument; zero past the end of the program.
  (func $arg (result i32)
    (local $v i32)
    (if (i32.le_u (i32.add (global.get $pc) (i32.const 4)) (global.get $len))
      (then (local.set $v (i32.load (i32.add (i32.const 0x8000) (global.get $pc))))))
    (global.set $pc (i32.add (global.get $pc) (i32.const 4)))
    (local.get $v))
  (func $run
    (local $op i32)
    (global.set $pc (i32.const 0))
    (block $done
      (loop $next
        (br_if $done (i32.ge_u (global.get $pc) (global.get $len)))
        (local.set $op (i32.load8_u (i32.add (i32.const 0x8000) (global.get $pc))))
        (global.set $pc (i32.add (global.get $pc) (i32.const 1)))
        (block $b17 (block $b16 (block $b15 (block $b14 (block $b13 (block $b12 (block $b11 (block $b10 (block $b9 (block $b8 (block $b7 (block $b6 (block $b5 (block $b4 (block $b3 (block $b2 (block $b1 (block $b0
          (br_table $b0 $b1 $b2 $b3 $b4 $b5 $b6 $b7 $b8 $b9 $b10 $b11 $b12 $b13 $b14 $b15 $b16 $b17 (i32.rem_u (local.get $op) (i32.const 18)))
        ) ;; 0
        (drop (call $request_get (call $arg) (call $arg) (call $arg)))
        (br $next)
        ) ;; 1
        (drop (call $request_header (call $arg) (call $arg) (call $arg) (call $arg)))
        (br $next)
        ) ;; 2
        (drop (call $request_cookie (call $arg) (call $arg) (call $arg) (call $arg)))
        (br $next)
        ) ;; 3
        (drop (call $backend_count))
        (br $next)
        ) ;; 4
        (drop (call $backend_get (call $arg) (call $arg)))
        (br $next)
        ) ;; 5
        (drop (call $backend_address (call $arg) (call $arg) (call $arg)))
        (br $next)
        ) ;; 6
        (drop (call $backend_name (call $arg) (call $arg) (call $arg)))
        (br $next)
        ) ;; 7
        (drop (call $backend_cookie_id (call $arg) (call $arg) (call $arg)))
        (br $next)
        ) ;; 8
        (drop (call $set_key (call $arg) (call $arg)))
        (br $next)
        ) ;; 9
        (drop (call $set_backend (call $arg)))
        (br $next)
        ) ;; 10
        (drop (call $set_load (call $arg)))
        (br $next)
        ) ;; 11
        (drop (call $set_agent (call $arg) (i64.extend_i32_s (call $arg))))
        (br $next)
        ) ;; 12
        (drop (call $response_add_header (call $arg) (call $arg) (call $arg) (call $arg)))
        (br $next)
        ) ;; 13
        (call $log (call $arg) (call $arg) (call $arg))
        (br $next)
        ) ;; 14
        (drop (call $check_target (call $arg) (call $arg)))
        (br $next)
        ) ;; 15
        (drop (call $tcp_exchange (call $arg) (call $arg) (call $arg) (call $arg) (call $arg) (call $arg)))
        (br $next)
        ) ;; 16
        (drop (call $http_get (call $arg) (call $arg) (call $arg) (call $arg) (call $arg)))
        (br $next)
        ) ;; 17
        (drop (call $last_response (call $arg) (call $arg)))
        (br $next)
      )))
)
