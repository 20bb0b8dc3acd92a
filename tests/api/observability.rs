//! What operators see: /metrics with every name the Grafana dashboard and
//! the alert rules use, alert rules that promtool checks and unit-tests,
//! Alertmanager's routes and inhibitions, a real Prometheus scraping the
//! service, the trace context carried from a
//! request to the AMQP messages it caused, and a valid compose file.

use crate::helpers::*;
use reqwest::StatusCode;
use std::collections::BTreeSet;
use std::process::Stdio;
use std::time::Duration;

async fn metrics_text(app: &TestApp) -> String {
    let reply = app
        .send(app.http.get(format!("{}/metrics", app.address)))
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    reply.body.as_str().unwrap_or_default().to_string()
}

/// Names exported, from the exposition's `# TYPE` lines.
fn exported(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

fn deploy_file(path: &str) -> String {
    let path = format!("{}/deploy/{path}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Metric names in PromQL expressions; histogram series suffixes map back
/// to their family.
fn metric_names(exprs: &[String]) -> BTreeSet<String> {
    let pattern = regex::Regex::new(r"\b([a-z][a-z0-9_]*?(?:_total|_seconds|_pending|_parked|_deferred|_state|_connections|_up))(?:_bucket|_sum|_count)?\b").expect("regex");
    exprs
        .iter()
        .flat_map(|e| {
            pattern
                .captures_iter(e)
                .map(|c| c[1].to_string())
                .collect::<Vec<_>>()
        })
        .collect()
}

fn dashboard_metrics() -> BTreeSet<String> {
    let dashboard: serde_json::Value =
        serde_json::from_str(&deploy_file("grafana/dashboards/order-service.json"))
            .expect("dashboard JSON");
    let mut exprs = Vec::new();
    collect_exprs(&dashboard, &mut exprs);
    metric_names(&exprs)
}

/// The rules' `expr:` values, a folded (`>`) one with its indented lines.
fn alert_exprs() -> Vec<String> {
    let rules = deploy_file("prometheus/alerts.yml");
    let mut exprs = Vec::new();
    let mut lines = rules.lines().peekable();
    while let Some(line) = lines.next() {
        let Some(rest) = line.trim_start().strip_prefix("expr:") else {
            continue;
        };
        let mut expr = rest.trim().to_string();
        if expr == ">" {
            let indent = line.len() - line.trim_start().len();
            expr.clear();
            while let Some(next) = lines.next_if(|l| l.len() - l.trim_start().len() > indent) {
                expr.push_str(next.trim());
                expr.push(' ');
            }
        }
        exprs.push(expr);
    }
    exprs
}

fn collect_exprs(value: &serde_json::Value, out: &mut Vec<String>) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, v) in map {
                match (key.as_str(), v) {
                    ("expr", serde_json::Value::String(expr)) => out.push(expr.clone()),
                    _ => collect_exprs(v, out),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| collect_exprs(v, out)),
        _ => {}
    }
}

#[tokio::test]
async fn every_metric_the_dashboard_uses_is_exported() {
    let app = spawn_app().await;
    let order = app.new_order("obs-1", "una", "vic", 100.0).await;
    app.pay("una", &order).await;
    let text = metrics_text(&app).await;
    let exported = exported(&text);
    // Each reader of the metrics uses several, and each of them exists.
    for (reader, used, at_least) in [
        ("dashboard", dashboard_metrics(), 10),
        ("alert rules", metric_names(&alert_exprs()), 8),
    ] {
        assert!(
            used.len() >= at_least,
            "{reader}: too few metrics: {used:?}"
        );
        let missing: Vec<&String> = used.iter().filter(|m| !exported.contains(*m)).collect();
        assert!(
            missing.is_empty(),
            "{reader} metrics not exported: {missing:?}"
        );
    }
    assert!(
        text.contains(r#"http_requests_total{method="POST",route="/api/v1/order",status="201"} 1"#),
        "route label is the matched route"
    );
    assert!(text.contains("outbox_pending "));
    // No readiness probe ran: the scrape itself says the database answers,
    // or the dependency alert would page for an instance nobody probes.
    assert!(
        text.contains(r#"dependency_up{dependency="mongo"} 1"#),
        "{text}"
    );
    app.shutdown().await;
}

/// Runs `tool` (promtool or amtool, installed by `scripts/deps.sh
/// prometheus`) in `deploy/{dir}`.
fn deploy_tool(tool: &str, dir: &str, args: &[&str]) -> String {
    let dir = format!("{}/deploy/{dir}", env!("CARGO_MANIFEST_DIR"));
    run_tool(tool, std::path::Path::new(&dir), args)
}

fn promtool(args: &[&str]) -> String {
    deploy_tool("promtool", "prometheus", args)
}

fn amtool(args: &[&str]) -> String {
    deploy_tool("amtool", "alertmanager", args)
}

#[test]
fn the_alert_rules_load_and_pass_their_unit_tests() {
    promtool(&["check", "config", "prometheus.yml"]);
    promtool(&["test", "rules", "alerts.test.yml"]);
}

#[test]
fn alertmanager_pages_for_page_alerts_and_files_the_rest() {
    amtool(&["check-config", "alertmanager.yml"]);
    let receiver = |labels: &[&str]| {
        amtool(
            &[
                &["config", "routes", "test", "--config.file=alertmanager.yml"][..],
                labels,
            ]
            .concat(),
        )
    };
    assert_eq!(
        receiver(&["alertname=OutboxBacklogStuck", "severity=page"]),
        "page"
    );
    assert_eq!(
        receiver(&["alertname=OutboxRecordsParked", "severity=ticket"]),
        "ticket"
    );
    // An inhibition naming an alert no rule raises would never act.
    let rules = deploy_file("prometheus/alerts.yml");
    let config = deploy_file("alertmanager/alertmanager.yml");
    let named: Vec<&str> = config
        .split("alertname=")
        .skip(1)
        .filter_map(|rest| rest.trim_start_matches('~').split('"').nth(1))
        .flat_map(|names| names.split('|'))
        .collect();
    assert!(named.len() >= 6, "{named:?}");
    for name in named {
        assert!(
            rules.contains(&format!("- alert: {name}\n")),
            "alertmanager.yml names {name}, which no rule in alerts.yml raises"
        );
    }
}

/// The alerts a running Alertmanager holds: name and state.
async fn alert_states(http: &reqwest::Client, base: &str) -> Vec<(String, String)> {
    let Ok(response) = http.get(format!("{base}/api/v2/alerts")).send().await else {
        return Vec::new();
    };
    let alerts: serde_json::Value = response.json().await.unwrap_or_default();
    alerts
        .as_array()
        .into_iter()
        .flatten()
        .map(|a| {
            (
                a["labels"]["alertname"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                a["status"]["state"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            )
        })
        .collect()
}

#[tokio::test]
async fn an_outage_pages_once_for_its_cause_not_again_for_what_it_explains() {
    let dir = std::env::temp_dir().join(format!("alertmanager-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).expect("dir");
    let port = free_port();
    let mut alertmanager = tokio::process::Command::new("prometheus-alertmanager")
        .arg(concat!(
            "--config.file=",
            env!("CARGO_MANIFEST_DIR"),
            "/deploy/alertmanager/alertmanager.yml"
        ))
        .arg(format!("--storage.path={}", dir.display()))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        // One node: no gossip port to collide with other runs.
        .arg("--cluster.listen-address=")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("alertmanager.log")).expect("log"))
        .kill_on_drop(true)
        .spawn()
        .expect("prometheus-alertmanager is installed by scripts/deps.sh prometheus");
    let http = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    // Each alert as its label pairs.
    type Labels = &'static [(&'static str, &'static str)];
    const BACKLOG_STUCK: Labels = &[("alertname", "OutboxBacklogStuck"), ("severity", "page")];
    let raise = |alerts: Vec<Labels>| {
        let http = http.clone();
        let base = base.clone();
        async move {
            let alerts: Vec<serde_json::Value> = alerts
                .iter()
                .map(|labels| {
                    let labels: serde_json::Map<String, serde_json::Value> = labels
                        .iter()
                        .map(|(k, v)| (k.to_string(), (*v).into()))
                        .collect();
                    serde_json::json!({ "labels": labels })
                })
                .collect();
            http.post(format!("{base}/api/v2/alerts"))
                .json(&alerts)
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
        }
    };
    let until = |wanted: &'static [(&'static str, &'static str)]| {
        let http = http.clone();
        let base = base.clone();
        async move {
            let mut seen = Vec::new();
            for _ in 0..120 {
                seen = alert_states(&http, &base).await;
                let holds = wanted
                    .iter()
                    .all(|(name, state)| seen.iter().any(|(n, s)| n == name && s == state));
                if holds {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            seen.sort();
            seen
        }
    };
    let mut posted = false;
    for _ in 0..100 {
        posted = raise(vec![BACKLOG_STUCK]).await;
        // Exited: a bad config, or its port taken before it bound it.
        if posted || alertmanager.try_wait().is_ok_and(|s| s.is_some()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        posted,
        "Alertmanager took no alerts on port {port}: {}",
        std::fs::read_to_string(dir.join("alertmanager.log")).unwrap_or_default()
    );
    // Alone, a stuck backlog pages.
    let alone = until(&[("OutboxBacklogStuck", "active")]).await;
    assert!(
        raise(vec![
            &[
                ("alertname", "FlutterwaveBreakerOpen"),
                ("severity", "page")
            ],
            &[("alertname", "OutboxRecordsParked"), ("severity", "ticket")],
        ])
        .await
    );
    let together = until(&[
        ("FlutterwaveBreakerOpen", "active"),
        ("OutboxBacklogStuck", "suppressed"),
        ("OutboxRecordsParked", "active"),
    ])
    .await;
    // The dependency alert holds back by its `dependency` label: the
    // broker's does not explain failing reconciliation, the database's does.
    const BROKER_DOWN: Labels = &[
        ("alertname", "OrderServiceDependencyDown"),
        ("severity", "page"),
        ("dependency", "rabbitmq"),
    ];
    const DATABASE_DOWN: Labels = &[
        ("alertname", "OrderServiceDependencyDown"),
        ("severity", "page"),
        ("dependency", "mongo"),
    ];
    const RECONCILIATION_FAILING: Labels = &[
        ("alertname", "ReconciliationChecksFailing"),
        ("severity", "ticket"),
    ];
    assert!(raise(vec![BROKER_DOWN, RECONCILIATION_FAILING]).await);
    let broker_down = until(&[("ReconciliationChecksFailing", "active")]).await;
    assert!(raise(vec![DATABASE_DOWN]).await);
    let database_down = until(&[("ReconciliationChecksFailing", "suppressed")]).await;
    let _ = alertmanager.kill().await;
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(alone, [("OutboxBacklogStuck".into(), "active".into())]);
    let state = |seen: &[(String, String)], name: &str| {
        seen.iter()
            .find(|(n, _)| n == name)
            .map(|(_, s)| s.to_string())
    };
    let expect = |seen: &[(String, String)], name: &str, wanted: &str| {
        assert_eq!(
            state(seen, name).as_deref(),
            Some(wanted),
            "{name}: {seen:?}"
        );
    };
    expect(&together, "FlutterwaveBreakerOpen", "active");
    expect(&together, "OutboxBacklogStuck", "suppressed");
    // Only what the breaker explains is held back.
    expect(&together, "OutboxRecordsParked", "active");
    expect(&broker_down, "ReconciliationChecksFailing", "active");
    expect(&database_down, "ReconciliationChecksFailing", "suppressed");
}

/// GitHub's anchor for a Markdown heading.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

#[test]
fn every_alert_runbook_points_at_a_section_that_exists() {
    let root = env!("CARGO_MANIFEST_DIR");
    let rules = deploy_file("prometheus/alerts.yml");
    let runbooks: Vec<&str> = rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("runbook: "))
        .map(|r| r.trim_matches('"'))
        .collect();
    assert_eq!(
        runbooks.len(),
        rules.matches("- alert:").count(),
        "every alert has a runbook"
    );
    for runbook in runbooks {
        let (file, section) = runbook.split_once('#').unwrap_or((runbook, ""));
        let text = std::fs::read_to_string(format!("{root}/{file}"))
            .unwrap_or_else(|e| panic!("{runbook}: {e}"));
        // Headings, not the `#` comments of code blocks.
        let mut in_code = false;
        let anchors: Vec<String> = text
            .lines()
            .filter(|l| {
                in_code ^= l.starts_with("```");
                !in_code
            })
            .filter_map(|l| l.strip_prefix('#'))
            .map(|l| anchor(l.trim_start_matches('#')))
            .collect();
        assert!(
            section.is_empty() || anchors.iter().any(|a| a == section),
            "{runbook}: no such section"
        );
    }
}

#[tokio::test]
async fn a_real_prometheus_scrapes_the_outbox_backlog() {
    let app = spawn_app().await;
    let dir = std::env::temp_dir().join(format!("prom-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).expect("dir");
    let target = app.address.trim_start_matches("http://");
    let config = format!(
        "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: order-service\n    static_configs:\n      - targets: ['{target}']\n"
    );
    std::fs::write(dir.join("prometheus.yml"), config).expect("config");
    let port = free_port();
    let mut prometheus = tokio::process::Command::new("prometheus")
        .arg(format!(
            "--config.file={}",
            dir.join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("prometheus is installed by scripts/deps.sh prometheus");
    let query = format!("http://127.0.0.1:{port}/api/v1/query?query=outbox_pending");
    let mut value = None;
    for _ in 0..120 {
        if let Ok(response) = app.http.get(&query).send().await
            && let Ok(body) = response.json::<serde_json::Value>().await
            && let Some(sample) = body["data"]["result"].get(0)
        {
            value = sample["value"][1].as_str().map(str::to_string);
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let _ = prometheus.kill().await;
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(
        value.as_deref(),
        Some("0"),
        "Prometheus read the outbox backlog from the service"
    );
    app.shutdown().await;
}

#[tokio::test]
async fn the_request_traceparent_travels_to_the_amqp_messages() {
    let app = spawn_app().await;
    let tap = EventTap::start(&app).await;
    let order = app.new_order("trace-1", "wes", "xia", 100.0).await;
    let payment = app.payment_for(&order);
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let reply = app
        .send(
            app.http
                .put(format!(
                    "{}/api/v1/order/verify/{payment}/{}",
                    app.address,
                    order["flutterwave"]["txRef"].as_str().unwrap()
                ))
                .header("gatewaytoken", gateway_token("order"))
                .bearer_auth(user_token("wes"))
                .header("traceparent", traceparent)
                .header("x-correlation-id", "corr-trace-1"),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    let received = tap
        .wait_until(Duration::from_secs(20), |_| {
            tap.for_order(&order).len() >= 3
        })
        .await;
    drop(received);
    for message in tap.for_order(&order) {
        let headers = message.properties.headers().as_ref().expect("headers");
        let value = match headers.inner().get("traceparent") {
            Some(lapin::types::AMQPValue::LongString(s)) => {
                String::from_utf8_lossy(s.as_bytes()).to_string()
            }
            other => panic!("traceparent header missing: {other:?}"),
        };
        assert_eq!(value, traceparent);
        assert_eq!(
            message
                .properties
                .correlation_id()
                .as_ref()
                .map(|s| s.as_str()),
            Some("corr-trace-1")
        );
    }
    app.shutdown().await;
}

#[test]
fn the_compose_file_is_valid_and_names_every_service() {
    let services = run_tool(
        "docker-compose",
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")),
        &["-f", "docker-compose.yaml", "config", "--services"],
    );
    for service in [
        "mongo",
        "rabbitmq",
        "elasticsearch",
        "kibana",
        "prometheus",
        "alertmanager",
        "grafana",
        "flutterwave-sim",
        "order-service",
    ] {
        assert!(
            services.lines().any(|l| l.trim() == service),
            "{service} missing from compose: {services}"
        );
    }
}
