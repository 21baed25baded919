#![no_main]
//! A KEMP or HAProxy agent's reply, through the agent-load plugin's parsers and health hook.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    agent_load::fuzz::agent_reply(data);
});
