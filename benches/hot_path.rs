//! Microbenchmarks of the two per-request steps that look at bytes: the
//! query rewrite and the errcode scan (with serde_json as the peer it
//! replaces). Run with `cargo bench`.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use wechat_token_proxy::{inspect, query};

const TOKEN: &str =
    "86_hGq1Rz4sV0dPkcXqXbZ1eV3yY8k9LmN2oP5qR7sT9uV1wX3yZ5aB7cD9eF1gH3iJ5kL7mN9oP1qR3sT5uV7wX9yZ";

fn query_rewrite(c: &mut Criterion) {
    let mut group = c.benchmark_group("query_rewrite");
    for (name, q) in [
        ("none", None),
        ("typical", Some("openid=o6_bmjrPTlm6_2sgVt7hMZOPfL2M&lang=zh_CN")),
        ("client_token", Some("access_token=WECHAT_TOKEN_PROXY_PLACEHOLDER&openid=o6_bmjrPTlm6_2sgVt7hMZOPfL2M&lang=zh_CN")),
    ] {
        group.bench_function(name, |b| {
            let mut out = String::with_capacity(256);
            b.iter(|| {
                out.clear();
                // As on every request: the token comes encoded already.
                query::with_param(black_box(q), "access_token", black_box(TOKEN), &mut out);
                black_box(out.len())
            })
        });
    }
    group.finish();
}

fn errcode(c: &mut Criterion) {
    let small = br#"{"errcode":40001,"errmsg":"invalid credential, access_token is invalid or not latest rid: 6543210f-1a2b3c4d-5e6f7a8b"}"#;
    let ok_user = br#"{"subscribe":1,"openid":"o6_bmjrPTlm6_2sgVt7hMZOPfL2M","nickname":"Band","sex":1,"language":"zh_CN","city":"Guangzhou","province":"Guangdong","country":"China","headimgurl":"http://thirdwx.qlogo.cn/mmopen/g3MonUZtNHkdmzicIlibx6iaFqAc56vxLSUfpb6n5WKSYVY0ChQKkiaJSgQ1dZuTOgvLLrhJbERQQ4eMsv84eavHiaiceqxibJxCfHe/0","subscribe_time":1382694957,"unionid":"o6_bmasdasdsad6_2sgVt7hMZOPfL","remark":"","groupid":0,"tagid_list":[128,2],"subscribe_scene":"ADD_SCENE_QR_CODE","qr_scene":98765,"qr_scene_str":""}"#;
    let mut group = c.benchmark_group("errcode");
    for (name, body) in [
        ("error_answer", &small[..]),
        ("user_info_answer", &ok_user[..]),
    ] {
        group.bench_function(format!("scan/{name}"), |b| {
            b.iter(|| inspect::errcode(black_box(body)))
        });
        group.bench_function(format!("serde_json/{name}"), |b| {
            b.iter(|| {
                serde_json::from_slice::<serde_json::Value>(black_box(body))
                    .ok()
                    .and_then(|v| v.get("errcode").and_then(serde_json::Value::as_i64))
            })
        });
    }
    group.finish();
}

criterion_group!(benches, query_rewrite, errcode);
criterion_main!(benches);
