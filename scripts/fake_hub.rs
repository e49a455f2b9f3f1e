//! The test suite's fake Hub as a server, for `scripts/check_fake_hub.py`: it prints
//! `FAKE_HUB_URL=<url>`, serves until its standard input closes, then writes every exchange
//! to the file named by its first argument (the transcript `tests/hub.rs` replays).
//!
//!     cargo run --example fake_hub -- transcript.json

#[path = "../tests/common/fake_hub/mod.rs"]
mod fake_hub;

use std::io::Read;

fn main() {
    let out = std::env::args()
        .nth(1)
        .expect("usage: fake_hub TRANSCRIPT.json");
    let hub = fake_hub::FakeHub::start();
    hub.state.lock().expect("state").transcript = Some(Vec::new());
    println!("FAKE_HUB_URL={}", hub.url);
    let mut sink = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut sink);
    let exchanges = hub.state.lock().expect("state").transcript.take();
    let text = serde_json::to_string_pretty(&exchanges).expect("json");
    std::fs::write(&out, text + "\n").expect("write the transcript");
}
