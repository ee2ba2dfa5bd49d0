//! The deploy files hold what they claim, read as kubectl and Prometheus
//! would read them (YAML parsed, not searched):
//!
//! - a directory apply of `deploy/` can take no Secret, and the README's
//!   command creates the Secret the Deployment mounts;
//! - the ConfigMap's config fails `check` until its appid is put in, then
//!   passes with the Secret's files; the example Secret's placeholders fail;
//! - the sidecar's memory limit covers the README's measured RSS at the
//!   ConfigMap's `max_connections`, and says the figure;
//! - the readiness probe follows "the proxy serves" (`/servingz`), which
//!   stays 200 while WeChat is unreachable (the real binary), while
//!   `/readyz` says the token is missing;
//! - the PodMonitor scrapes the admin port with the Secret's admin key,
//!   under the job name the target-down alert selects.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use yaml_rust2::{Yaml, YamlLoader};

use common::setup::MP_APPID;
use common::{run_binary, wait_until_async, write_temp, Http, Proxy};

const CONFIGMAP: &str = "deploy/kubernetes/configmap.yaml";
const DEPLOYMENT: &str = "deploy/kubernetes/deployment.yaml";
const SECRET_EXAMPLE: &str = "deploy/kubernetes/secret.example.yaml.txt";
const PODMONITOR: &str = "deploy/prometheus/podmonitor.yaml";
/// The ConfigMap's appid placeholder, which `check` must refuse.
const APPID_PLACEHOLDER: &str = "REPLACE_WITH_YOUR_APPID";
/// The README row with the measured RSS of busy connections.
const BUSY_RSS_ROW: &str = "| RSS at 1,000 / 5,000 busy connections |";
/// A TLS connection to WeChat costs about this much (rustls buffers and
/// state); the benchmark's upstream is plain HTTP, so it is added.
const TLS_UPSTREAM_KIB: f64 = 50.0;
/// Connections to WeChat per app by default (`max_connections_per_app`).
const UPSTREAM_CONNECTIONS: f64 = 128.0;
/// How much above the expected RSS the limit must be.
const HEADROOM: f64 = 1.25;

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// A file as committed: following the README edits the ConfigMap (its
/// appid) and the Deployment (its image), and the tests check what ships.
fn read(path: &str) -> String {
    common::committed(path)
}

/// The documents of a YAML file.
fn yaml(path: &str) -> Vec<Yaml> {
    YamlLoader::load_from_str(&read(path)).unwrap_or_else(|e| panic!("{path} is not YAML: {e}"))
}

/// The one document of a manifest file.
fn manifest(path: &str) -> Yaml {
    let mut docs = yaml(path);
    assert_eq!(docs.len(), 1, "{path}: one manifest expected");
    docs.remove(0)
}

fn text<'y>(node: &'y Yaml, what: &str) -> &'y str {
    node.as_str()
        .unwrap_or_else(|| panic!("{what}: a string expected, found {node:?}"))
}

/// The `config.toml` entry of the ConfigMap.
fn configmap_toml() -> String {
    let configmap = manifest(CONFIGMAP);
    text(
        &configmap["data"]["config.toml"],
        "the ConfigMap's config.toml",
    )
    .to_owned()
}

/// The proxy's container in the Deployment (a native sidecar: an init
/// container).
fn sidecar() -> Yaml {
    let deployment = manifest(DEPLOYMENT);
    let init = deployment["spec"]["template"]["spec"]["initContainers"]
        .as_vec()
        .expect("the Deployment has initContainers")
        .iter()
        .find(|c| c["name"].as_str() == Some("wechat-token-proxy"))
        .expect("the wechat-token-proxy init container")
        .clone();
    assert_eq!(
        init["restartPolicy"].as_str(),
        Some("Always"),
        "the proxy runs as a native sidecar"
    );
    init
}

/// The Secret volume the Deployment mounts: its name and the keys it takes.
fn mounted_secret() -> (String, Vec<String>) {
    let deployment = manifest(DEPLOYMENT);
    let volume = deployment["spec"]["template"]["spec"]["volumes"]
        .as_vec()
        .expect("the pod has volumes")
        .iter()
        .find(|v| !v["secret"].is_badvalue())
        .expect("a Secret volume")
        .clone();
    let name = text(&volume["secret"]["secretName"], "secretName").to_owned();
    let keys = volume["secret"]["items"]
        .as_vec()
        .expect("the Secret volume lists its items")
        .iter()
        .map(|i| text(&i["key"], "an item's key").to_owned())
        .collect();
    (name, keys)
}

/// Runs `check` on the ConfigMap's config with the Secret's files holding
/// `secrets`, as the pod would mount them, and `appid` for the placeholder
/// when given. The listeners are moved to free ports: check binds them, and
/// this machine is shared.
fn check_configmap(appid: Option<&str>, secrets: &[(&str, &str)]) -> (Option<i32>, String) {
    let mut toml = configmap_toml()
        .replace("127.0.0.1:8080", "127.0.0.1:0")
        .replace("[::]:8079", "127.0.0.1:0");
    if let Some(appid) = appid {
        toml = toml.replace(APPID_PLACEHOLDER, appid);
    }
    for (key, value) in secrets {
        let file = write_temp(key, &format!("{value}\n"));
        toml = toml.replace(
            &format!("/run/secrets/wechat/{key}"),
            file.to_str().unwrap(),
        );
    }
    let fixed_port = toml
        .lines()
        .find(|l| l.contains("listen = ") && !l.contains(":0\""));
    assert!(
        fixed_port.is_none(),
        "a listener the test does not move to a free port: {fixed_port:?}"
    );
    let unprovided = toml.lines().find(|l| l.contains("/run/secrets/"));
    assert!(
        unprovided.is_none(),
        "a secret file the test does not provide: {unprovided:?}"
    );
    let path = write_temp("configmap.toml", &toml);
    let (status, _, err) = run_binary(&["check", "--config", path.to_str().unwrap()], &[]);
    (status.code(), err)
}

const GOOD_SECRETS: [(&str, &str); 2] = [
    ("mp-secret", "0123456789abcdef0123456789abcdef"),
    ("admin-key", "0123456789abcdef0123456789abcdef"),
];

#[test]
fn the_configmap_passes_check_once_the_appid_is_put_in() {
    let (code, err) = check_configmap(Some(MP_APPID), &GOOD_SECRETS);
    assert_eq!(
        code,
        Some(0),
        "the ConfigMap with an appid and the Secret's files should pass check: {err}"
    );
}

#[test]
fn the_configmap_unedited_fails_check_naming_the_appid() {
    let (code, err) = check_configmap(None, &GOOD_SECRETS);
    assert_eq!(
        code,
        Some(2),
        "the ConfigMap as shipped must not pass check (a forgotten edit would run never-ready): {err}"
    );
    assert!(
        err.contains("apps.mp.appid") && err.contains(APPID_PLACEHOLDER),
        "the refusal should name apps.mp.appid and its placeholder: {err}"
    );
}

/// Every committed file under `deploy/` that `kubectl apply -R -f` reads.
fn applied_files() -> Vec<String> {
    let out = std::process::Command::new("git")
        .args(["ls-tree", "-r", "--name-only", "HEAD", "deploy"])
        .current_dir(repo("."))
        .output()
        .expect("run git");
    assert!(out.status.success(), "git ls-tree failed");
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter(|f| f.ends_with(".yaml") || f.ends_with(".yml") || f.ends_with(".json"))
        .map(str::to_owned)
        .collect()
}

#[test]
fn a_directory_apply_of_deploy_takes_no_secret() {
    let files = applied_files();
    assert!(
        files.iter().any(|f| f.ends_with("deployment.yaml")),
        "the walk should find the manifests: {files:?}"
    );
    for file in files {
        let Ok(docs) = YamlLoader::load_from_str(&read(&file)) else {
            continue; // not a manifest kubectl could apply either
        };
        for doc in docs {
            assert_ne!(
                doc["kind"].as_str(),
                Some("Secret"),
                "{file}: `kubectl apply -f` of its directory would overwrite the real Secret with it"
            );
        }
    }
}

/// The example Secret's `stringData`, as (key, value).
fn secret_example() -> Vec<(String, String)> {
    let secret = manifest(SECRET_EXAMPLE);
    assert_eq!(secret["kind"].as_str(), Some("Secret"));
    secret["stringData"]
        .as_hash()
        .expect("stringData")
        .iter()
        .map(|(k, v)| (text(k, "a key").to_owned(), text(v, "a value").to_owned()))
        .collect()
}

#[test]
fn each_placeholder_of_the_example_secret_fails_check() {
    let example = secret_example();
    let (name, keys) = mounted_secret();
    let example_keys: Vec<&str> = example.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        example_keys, keys,
        "the example holds the keys the Deployment mounts"
    );
    assert_eq!(
        text(&manifest(SECRET_EXAMPLE)["metadata"]["name"], "name"),
        name
    );

    for (key, placeholder) in &example {
        let mut secrets = GOOD_SECRETS.to_vec();
        for s in secrets.iter_mut().filter(|(k, _)| k == key) {
            s.1 = placeholder;
        }
        let (code, err) = check_configmap(Some(MP_APPID), &secrets);
        let config_key = match key.as_str() {
            "mp-secret" => "apps.mp.secret_file",
            _ => "proxy.admin_key_file",
        };
        assert_eq!(
            code,
            Some(2),
            "the example's {key} placeholder was accepted as a secret: {err}"
        );
        assert!(
            err.contains(config_key),
            "the refusal should name {config_key}: {err}"
        );
    }
}

#[test]
fn the_readmes_secret_command_creates_what_the_deployment_mounts() {
    let readme = read("README.md");
    let command = readme
        .lines()
        .find(|l| l.trim_start().starts_with("kubectl create secret generic"))
        .expect("the README's command to create the Secret");
    let mut words = command.split_whitespace().skip(4);
    let name = words.next().expect("the Secret's name");
    let keys: Vec<&str> = words
        .filter_map(|w| w.strip_prefix("--from-file="))
        .map(|w| w.split('=').next().unwrap())
        .collect();

    let (mounted, mounted_keys) = mounted_secret();
    assert_eq!(
        name, mounted,
        "the README creates the Secret the Deployment mounts"
    );
    assert_eq!(
        keys, mounted_keys,
        "the README's Secret holds the keys the Deployment mounts"
    );
    let config = configmap_toml();
    for key in keys {
        assert!(
            config.contains(&format!("/run/secrets/wechat/{key}")),
            "the config reads no /run/secrets/wechat/{key}"
        );
    }
}

/// MiB in a Kubernetes quantity such as `128Mi`.
fn mebibytes(quantity: &str) -> f64 {
    let (number, unit) = quantity.split_at(quantity.find(|c: char| !c.is_ascii_digit()).unwrap());
    let number: f64 = number.parse().unwrap();
    match unit {
        "Mi" => number,
        "Gi" => number * 1024.0,
        _ => panic!("a memory quantity this test does not read: {quantity}"),
    }
}

/// The README's measured RSS at 1,000 and at 5,000 busy connections, MiB.
fn measured_busy_rss() -> (f64, f64) {
    let readme = read("README.md");
    let row = readme
        .lines()
        .find(|l| l.starts_with(BUSY_RSS_ROW))
        .unwrap_or_else(|| panic!("the README's Performance table has no row {BUSY_RSS_ROW:?}"));
    let cell = row.trim_end_matches('|').rsplit('|').next().unwrap();
    let figures: Vec<f64> = cell
        .split(|c: char| !(c.is_ascii_digit() || c == '.'))
        .filter(|w| !w.is_empty())
        .map(|w| w.parse().unwrap())
        .collect();
    assert_eq!(figures.len(), 2, "two figures expected in {row:?}");
    (figures[0], figures[1])
}

#[test]
fn the_sidecars_memory_limit_covers_the_measured_rss_at_its_max_connections() {
    let config = configmap_toml();
    let max_connections: f64 = config
        .lines()
        .find_map(|l| l.trim().strip_prefix("max_connections = "))
        .expect("the ConfigMap sets max_connections (the default 16384 needs far more memory)")
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let (at_1000, at_5000) = measured_busy_rss();
    // Between and beyond the two measured points, the cost per connection
    // between them; below 1,000, the 1,000 figure.
    let per_connection = (at_5000 - at_1000) / 4000.0;
    let busy = at_1000 + (max_connections - 1000.0).max(0.0) * per_connection;
    let expected = busy + UPSTREAM_CONNECTIONS * TLS_UPSTREAM_KIB / 1024.0;

    let limit = sidecar()["resources"]["limits"]["memory"]
        .as_str()
        .expect("the sidecar has a memory limit")
        .to_owned();
    assert!(
        mebibytes(&limit) >= expected * HEADROOM,
        "memory limit {limit} < {HEADROOM} × the {expected:.1} MiB that max_connections = {max_connections} takes busy (README: {at_1000} / {at_5000} MiB at 1,000 / 5,000)"
    );
    let stated = format!("{busy:.1} MiB");
    let deployment = read(DEPLOYMENT);
    let above_resources = &deployment[..deployment.find("resources:").unwrap()];
    assert!(
        above_resources
            .lines()
            .rev()
            .skip(1) // the indentation of `resources:` itself
            .take_while(|l| l.trim_start().starts_with('#'))
            .any(|l| l.contains(&stated)),
        "the comment above the sidecar's resources should state the measured {stated}"
    );
}

#[test]
fn the_probes_follow_the_proxy_not_wechat() {
    let sidecar = sidecar();
    let path = |probe: &str| text(&sidecar[probe]["httpGet"]["path"], probe).to_owned();
    assert_eq!(
        path("readinessProbe"),
        "/servingz",
        "readiness must not follow WeChat: /readyz would take the application out of its Service during a WeChat outage"
    );
    assert_eq!(path("livenessProbe"), "/healthz");
    assert_eq!(path("startupProbe"), "/healthz");
    for probe in ["readinessProbe", "livenessProbe", "startupProbe"] {
        assert_eq!(sidecar[probe]["httpGet"]["port"].as_str(), Some("admin"));
    }
    let admin_port = sidecar["ports"]
        .as_vec()
        .expect("ports")
        .iter()
        .find(|p| p["name"].as_str() == Some("admin"))
        .expect("a port named admin")["containerPort"]
        .as_i64();
    assert!(
        configmap_toml().contains(&format!("admin_listen = \"[::]:{}\"", admin_port.unwrap())),
        "the admin port is the ConfigMap's admin_listen"
    );
}

#[test]
fn the_podmonitor_scrapes_the_admin_port_with_the_admin_key_under_the_alerts_job() {
    let monitor = manifest(PODMONITOR);
    assert_eq!(monitor["kind"].as_str(), Some("PodMonitor"));
    let deployment = manifest(DEPLOYMENT);
    let pod_labels = &deployment["spec"]["template"]["metadata"]["labels"];
    for (label, value) in monitor["spec"]["selector"]["matchLabels"]
        .as_hash()
        .expect("matchLabels")
    {
        assert_eq!(
            &pod_labels[text(label, "label")],
            value,
            "the PodMonitor selects the Deployment's pods"
        );
    }
    let endpoints = monitor["spec"]["podMetricsEndpoints"]
        .as_vec()
        .expect("endpoints");
    assert_eq!(endpoints.len(), 1);
    let endpoint = &endpoints[0];
    assert_eq!(endpoint["port"].as_str(), Some("admin"));
    assert_eq!(endpoint["path"].as_str(), Some("/metrics"));
    let credentials = &endpoint["authorization"]["credentials"];
    let (secret, keys) = mounted_secret();
    assert_eq!(credentials["name"].as_str(), Some(secret.as_str()));
    assert!(keys
        .iter()
        .any(|k| Some(k.as_str()) == credentials["key"].as_str()));
    assert_eq!(credentials["key"].as_str(), Some("admin-key"));

    let job = endpoint["relabelings"]
        .as_vec()
        .expect("relabelings")
        .iter()
        .find(|r| r["targetLabel"].as_str() == Some("job"))
        .expect("a relabeling that names the job")["replacement"]
        .as_str()
        .expect("the job's name")
        .to_owned();
    let rules = read("deploy/prometheus/alerts.yml");
    assert!(
        rules.contains(&format!("up{{job=\"{job}\"}} == 0")),
        "alerts.yml's target-down alert should select job {job:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn servingz_stays_200_while_wechat_is_unreachable_and_readyz_says_why() {
    // A port with nothing listening: every connection to "WeChat" is refused.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let unreachable = closed.local_addr().unwrap();
    drop(closed);
    let config = format!(
        r#"
[proxy]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"

[upstream]
connect_timeout_ms = 500
token_retry_min_ms = 200
token_retry_max_ms = 1000

[apps.mp]
kind = "mp"
appid = "{MP_APPID}"
secret_env = "{var}"
base_url = "http://{unreachable}"
"#,
        var = common::setup::SECRET_VAR
    );
    let proxy = Proxy::start(&config, &common::setup::env());
    let http = Http::new();
    let readyz = format!("{}/readyz", proxy.admin_url);
    wait_until_async(
        "/readyz to report the failed fetch",
        Duration::from_secs(10),
        || {
            let (http, readyz) = (http.clone(), readyz.clone());
            async move {
                let answer = http.get(&readyz).await;
                answer.status == 503 && answer.text().contains("cannot reach")
            }
        },
    )
    .await;

    let serving = http.get(&format!("{}/servingz", proxy.admin_url)).await;
    assert_eq!(
        serving.status,
        200,
        "/servingz must stay 200 while WeChat is unreachable: {}",
        serving.text()
    );
    assert_eq!(serving.json()["serving"], true);
    let call = http
        .get(&format!("{}/cgi-bin/user/info?openid=o", proxy.url))
        .await;
    assert_eq!(call.status, 503, "calls get WeChat-shaped 503s meanwhile");
    assert_eq!(call.json()["errcode"], -1, "{}", call.text());
}
