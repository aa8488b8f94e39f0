//! `uniffi-bindgen`: generates the mobile bridge's foreign-language bindings, e.g.
//! `cargo run -p uniffi-bindgen -- generate --library <libdoorstep_mobile_bridge.so>
//! --language kotlin --out-dir <dir>`. Pinned to the workspace's uniffi version, so the
//! generated code always matches the scaffolding compiled into the bridge.
#![forbid(unsafe_code)]

fn main() {
    uniffi::uniffi_bindgen_main()
}
