//! The deploy files hold what they claim: the Kubernetes ConfigMap is a
//! config `check` accepts with the Secret's real files, the Secret's
//! placeholders applied as they are make `check` fail, and the sidecar's
//! memory limit fits the connections its config allows.

mod common;

use std::path::Path;

use common::{run_binary, write_temp};

fn read(path: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// The `config.toml` entry of configmap.yaml.
fn configmap_toml() -> String {
    let manifest = read("deploy/kubernetes/configmap.yaml");
    let start = manifest
        .find("config.toml: |")
        .expect("a config.toml entry");
    manifest[start..]
        .lines()
        .skip(1)
        .take_while(|l| l.is_empty() || l.starts_with("    "))
        .map(|l| format!("{}\n", l.get(4..).unwrap_or("")))
        .collect()
}

/// The `stringData` entries of secret.example.yaml, as (key, value).
fn secret_example() -> Vec<(String, String)> {
    let manifest = read("deploy/kubernetes/secret.example.yaml");
    let start = manifest.find("stringData:").expect("a stringData section");
    manifest[start..]
        .lines()
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter(|l| !l.trim_start().starts_with('#'))
        .map(|l| {
            let (key, value) = l.trim().split_once(": ").expect("key: \"value\"");
            (key.to_owned(), value.trim_matches('"').to_owned())
        })
        .collect()
}

/// Runs `check` on the ConfigMap's config with the Secret's files holding
/// `secrets`, as the pod would mount them. The listeners are moved to free
/// ports: check binds them, and this machine is shared.
fn check_configmap(secrets: &[(String, String)]) -> (Option<i32>, String, String) {
    let mut toml = configmap_toml()
        .replace("127.0.0.1:8080", "127.0.0.1:0")
        .replace("[::]:9090", "127.0.0.1:0");
    for (key, value) in secrets {
        let file = write_temp(key, &format!("{value}\n"));
        toml = toml.replace(
            &format!("/run/secrets/wechat/{key}"),
            file.to_str().unwrap(),
        );
    }
    let fixed_port = toml
        .lines()
        .any(|l| l.contains("listen = ") && !l.contains(":0\""));
    assert!(
        !toml.contains("/run/secrets/") && !fixed_port,
        "a path or port the test does not provide:\n{toml}"
    );
    let path = write_temp("configmap.toml", &toml);
    let (status, out, err) = run_binary(&["check", "--config", path.to_str().unwrap()], &[]);
    (status.code(), out, err)
}

#[test]
fn the_configmap_holds_a_valid_config() {
    let secrets = [
        ("mp-secret".to_owned(), "an-app-secret".to_owned()),
        (
            "admin-key".to_owned(),
            "0123456789abcdef0123456789abcdef".to_owned(),
        ),
    ];
    let (code, out, err) = check_configmap(&secrets);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("OK (1 app: mp)"), "{out}");
}

#[test]
fn the_secret_applied_as_it_is_fails_check() {
    let secrets = secret_example();
    let keys: Vec<&str> = secrets.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys, ["mp-secret", "admin-key"]);

    let (code, _, err) = check_configmap(&secrets);

    assert_eq!(
        code,
        Some(2),
        "the example Secret's placeholders were accepted: {err}"
    );
    assert!(err.contains("proxy.admin_key_file"), "{err}");
}

/// Megabytes in a Kubernetes quantity such as `128Mi`.
fn mebibytes(quantity: &str) -> u64 {
    let (number, unit) = quantity.split_at(quantity.find(|c: char| !c.is_ascii_digit()).unwrap());
    let number: u64 = number.parse().unwrap();
    match unit {
        "Mi" => number,
        "Gi" => number * 1024,
        _ => panic!("a memory quantity this test does not read: {quantity}"),
    }
}

#[test]
fn the_sidecars_memory_limit_fits_its_connections() {
    // bench/idle.sh: about 11 KiB per idle client connection, and the proxy
    // at rest (and under load) stays below 32 MiB.
    const PER_CONNECTION_KIB: u64 = 11;
    const AT_REST_MIB: u64 = 32;

    let config = configmap_toml();
    let max_connections: u64 = config
        .lines()
        .find_map(|l| l.strip_prefix("max_connections = "))
        .expect("configmap.yaml sets max_connections (the default 16384 needs ~210 MiB)")
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();

    let deployment = read("deploy/kubernetes/deployment.yaml");
    let sidecar = deployment
        .find("- name: wechat-token-proxy")
        .expect("the sidecar container");
    let limits = sidecar + deployment[sidecar..].find("limits:").expect("its limits");
    let limit = deployment[limits..]
        .lines()
        .find_map(|l| l.trim().strip_prefix("memory: "))
        .expect("a memory limit");

    let needed = AT_REST_MIB + max_connections * PER_CONNECTION_KIB / 1024;
    assert!(
        mebibytes(limit) >= needed,
        "memory limit {limit} < the {needed} MiB that max_connections = {max_connections} may take"
    );
}
