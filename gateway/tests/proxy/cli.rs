use std::process::Command;

fn gateway() -> Command {
    Command::new(env!("CARGO_BIN_EXE_gateway"))
}

#[test]
fn the_example_config_passes_check() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/gateway.example.toml");
    let out = gateway()
        .args(["--check", "--config", example])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn check_rejects_a_bad_file_naming_the_key() {
    let path =
        std::env::temp_dir().join(format!("scaleout-gateway-{}-bad.toml", std::process::id()));
    std::fs::write(
        &path,
        "listen = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n[[upstreams]]\nname = \"web\"\npolicy = \"fastest\"\n",
    )
    .unwrap();
    let out = gateway()
        .args(["--check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&path);
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("fastest") && err.contains("policy"), "{err}");
}

#[test]
fn the_config_file_can_come_from_gateway_config() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/gateway.example.toml");
    let out = gateway()
        .arg("--check")
        .env("GATEWAY_CONFIG", example)
        .output()
        .unwrap();
    assert!(out.status.success());
}
