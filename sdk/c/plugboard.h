/*
 * plugboard.h: the Plugboard WASM plugin ABI, version 1, for C (sdk/ABI.md is the reference).
 *
 * Build a plugin with Debian's clang and lld, no libc:
 *
 *   clang --target=wasm32 -nostdlib -O2 -Wl,--no-entry -Wl,--export-dynamic \
 *         -I sdk/c -o my-plugin.wasm my-plugin.c
 *
 * Conventions: integers are int32_t unless stated; pointers are offsets into the module's
 * memory (exported as "memory" by wasm-ld); strings are UTF-8 and not NUL-terminated.
 * Functions that return a value of variable size take (buf, cap), copy min(len, cap) bytes
 * and return the full length; -1 means absent, -2 a pointer or length outside memory, -3 not
 * allowed in this call, -4 over a limit (shared data).
 *
 * One instance runs per service and worker thread: C globals are per thread. What all
 * threads see is the shared data (plugboard_shared_*): 64 counters and a key-value store.
 */
#ifndef PLUGBOARD_H
#define PLUGBOARD_H

#include <stdint.h>

#define PLUGBOARD_ABI_VERSION 1

/* Bits of plugboard_hooks(). */
#define PLUGBOARD_HOOK_SELECT 1
#define PLUGBOARD_HOOK_KEY 2
#define PLUGBOARD_HOOK_HEALTH 4
#define PLUGBOARD_HOOK_RESPONSE 8

/* Request fields for plugboard_request_get. PATH has no query string (that is QUERY). */
enum plugboard_field {
  PLUGBOARD_SERVICE = 0,
  PLUGBOARD_MODE = 1,
  PLUGBOARD_CLIENT_IP = 2,
  PLUGBOARD_CLIENT_PORT = 3,
  PLUGBOARD_KEY = 4,
  PLUGBOARD_METHOD = 5,
  PLUGBOARD_PATH = 6,
  PLUGBOARD_HOST = 7,
  PLUGBOARD_PAYLOAD = 8,
  PLUGBOARD_QUERY = 9,
};

/* Backend properties for plugboard_backend_get. */
enum plugboard_prop {
  PLUGBOARD_WEIGHT = 0,
  PLUGBOARD_ACTIVE = 1,
  PLUGBOARD_LOAD = 2,
  PLUGBOARD_AVAILABLE = 3, /* can take this request, as the proxy's own schedulers decide */
  PLUGBOARD_ENABLED = 4,
  PLUGBOARD_EFFECTIVE_WEIGHT = 5,
  PLUGBOARD_AGENT_WEIGHT_PERCENT = 6,
  PLUGBOARD_AGENT_MAXCONN = 7,
  PLUGBOARD_AGENT_ADMIN = 8,
  PLUGBOARD_AGENT_UP = 9,
  PLUGBOARD_UP = 10,
};

/* Log levels for plugboard_log. */
enum plugboard_level { PLUGBOARD_ERROR = 0, PLUGBOARD_WARN = 1, PLUGBOARD_INFO = 2, PLUGBOARD_DEBUG = 3 };

#define PLUGBOARD_IMPORT(name) __attribute__((import_module("plugboard"), import_name(#name)))
/* Marks a function as one of the exports the host calls (plugboard_select_server, ...). */
#define PLUGBOARD_EXPORT(name) __attribute__((export_name(#name)))

/* ---- Imports: what the host provides ---- */

/* A request field (enum plugboard_field) into buf; its full length, or -1 if absent. */
PLUGBOARD_IMPORT(request_get) int32_t plugboard_request_get(int32_t field, char *buf, int32_t cap);
/* First value of a request header (name case-insensitive). */
PLUGBOARD_IMPORT(request_header)
int32_t plugboard_request_header(const char *name, int32_t name_len, char *buf, int32_t cap);
/* A cookie's value from the Cookie headers. */
PLUGBOARD_IMPORT(request_cookie)
int32_t plugboard_request_cookie(const char *name, int32_t name_len, char *buf, int32_t cap);
/* Number of backends of the service. */
PLUGBOARD_IMPORT(backend_count) int32_t plugboard_backend_count(void);
/* A backend property (enum plugboard_prop); -1 for a bad index. Indexes are 0-based. */
PLUGBOARD_IMPORT(backend_get) int64_t plugboard_backend_get(int32_t index, int32_t prop);
/* "IP:PORT", the stable name, and the cookie id of a backend. */
PLUGBOARD_IMPORT(backend_address) int32_t plugboard_backend_address(int32_t index, char *buf, int32_t cap);
PLUGBOARD_IMPORT(backend_name) int32_t plugboard_backend_name(int32_t index, char *buf, int32_t cap);
PLUGBOARD_IMPORT(backend_cookie_id) int32_t plugboard_backend_cookie_id(int32_t index, char *buf, int32_t cap);
/* persistence-key: the key bytes (copied), or the backend the request names. */
PLUGBOARD_IMPORT(set_key) int32_t plugboard_set_key(const char *key, int32_t len);
PLUGBOARD_IMPORT(set_backend) int32_t plugboard_set_backend(int32_t index);
/* health-check: load 0-100 (-1 forgets it); agent state (see ABI.md). */
PLUGBOARD_IMPORT(set_load) int32_t plugboard_set_load(int32_t load);
PLUGBOARD_IMPORT(set_agent) int32_t plugboard_set_agent(int32_t prop, int64_t value);
/* Response step: add a response header; -3 for an invalid name or value. */
PLUGBOARD_IMPORT(response_add_header)
int32_t plugboard_response_add_header(const char *name, int32_t name_len, const char *value, int32_t value_len);
/* A line in the proxy's log (at most 20 a second per plugin and service). */
PLUGBOARD_IMPORT(log) void plugboard_log(int32_t level, const char *msg, int32_t len);
/* health-check only: the address to check, a TCP exchange, an HTTP GET, and their answer. */
PLUGBOARD_IMPORT(check_target) int32_t plugboard_check_target(char *buf, int32_t cap);
PLUGBOARD_IMPORT(tcp_exchange)
int32_t plugboard_tcp_exchange(const char *addr, int32_t addr_len, const char *send, int32_t send_len,
                               int32_t want, int32_t timeout_ms);
PLUGBOARD_IMPORT(http_get)
int32_t plugboard_http_get(const char *addr, int32_t addr_len, const char *path, int32_t path_len,
                           int32_t timeout_ms);
PLUGBOARD_IMPORT(last_response) int32_t plugboard_last_response(char *buf, int32_t cap);

/* Shared data: the same for every instance of the plugin in the service, on every worker
 * thread. Counters 0-63: add delta (wrapping), return the previous value (INT64_MIN for a
 * counter outside 0-63). Keys up to 256 bytes, values up to 4096, at most 1024 entries. */
PLUGBOARD_IMPORT(shared_counter_add) int64_t plugboard_shared_counter_add(int32_t counter, int64_t delta);
/* The value of key into buf: its full length, -1 absent. */
PLUGBOARD_IMPORT(shared_get)
int32_t plugboard_shared_get(const char *key, int32_t key_len, char *buf, int32_t cap);
/* Sets key (value_len -1: removes it): 0, or -4 over a limit. */
PLUGBOARD_IMPORT(shared_set)
int32_t plugboard_shared_set(const char *key, int32_t key_len, const char *value, int32_t value_len);
/* Sets key (value_len -1: removes it) only if its value is `expected` (expected_len -1:
 * absent): 1 changed, 0 the value differed, -4 over a limit. */
PLUGBOARD_IMPORT(shared_cas)
int32_t plugboard_shared_cas(const char *key, int32_t key_len, const char *expected, int32_t expected_len,
                             const char *value, int32_t value_len);

/* ---- Exports: what the plugin provides ----
 *
 *   PLUGBOARD_EXPORT(plugboard_abi_version) int32_t plugboard_abi_version(void);   returns 1
 *   PLUGBOARD_EXPORT(plugboard_hooks) int32_t plugboard_hooks(void);               hook bits
 *   PLUGBOARD_EXPORT(plugboard_alloc) int32_t plugboard_alloc(int32_t len);        for settings
 *   PLUGBOARD_EXPORT(plugboard_init) int32_t plugboard_init(int32_t ptr, int32_t len);  0 accepts
 *   PLUGBOARD_EXPORT(plugboard_select_server) int32_t plugboard_select_server(int32_t n);
 *       0..n-1 the backend, -1 no opinion
 *   PLUGBOARD_EXPORT(plugboard_persistence_key) int32_t plugboard_persistence_key(void);
 *   PLUGBOARD_EXPORT(plugboard_on_response) int32_t plugboard_on_response(int32_t named, int32_t served);
 *   PLUGBOARD_EXPORT(plugboard_health_check) int32_t plugboard_health_check(int32_t backend);
 *
 * PLUGBOARD_PLUGIN(hooks, settings_max) defines the first four for a plugin that ignores its
 * settings (JSON, at most settings_max bytes; longer settings fail to load). */
#define PLUGBOARD_PLUGIN(hooks, settings_max)                                                  \
  static char plugboard_settings_[settings_max];                                              \
  PLUGBOARD_EXPORT(plugboard_abi_version) int32_t plugboard_abi_version(void) {               \
    return PLUGBOARD_ABI_VERSION;                                                            \
  }                                                                                           \
  PLUGBOARD_EXPORT(plugboard_hooks) int32_t plugboard_hooks(void) { return (hooks); }        \
  PLUGBOARD_EXPORT(plugboard_alloc) int32_t plugboard_alloc(int32_t len) {                   \
    return len <= (int32_t)sizeof plugboard_settings_ ? (int32_t)(intptr_t)plugboard_settings_ \
                                                       : -1;                                  \
  }                                                                                           \
  PLUGBOARD_EXPORT(plugboard_init) int32_t plugboard_init(int32_t ptr, int32_t len) {         \
    (void)ptr;                                                                                \
    (void)len;                                                                                \
    return 0;                                                                                 \
  }

#endif
