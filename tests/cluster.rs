//! Three nodes in three network namespaces joined by a bridge, with Redis and SeaweedFS in
//! a fourth, where the test's client runs too (the test never reaches a namespace address
//! from the machine's own namespace). The nodes share only Redis and the bucket and know
//! each other by `NODE_URL`: any node answers any call. A file goes up through one node and
//! comes back byte for byte from another; Python state holds while calls hop between nodes
//! (they are forwarded to the node with the kernel, streams too); the owner killed with
//! SIGKILL costs its kernel and no file; a programmatic run's continuation and
//! cancellation, and an MCP session's requests, reach the node that holds them, and a
//! continuation whose node died is told so; 3 x 20 sessions at once mix nothing; Redis and
//! SeaweedFS restarted mid-run give 503s with a sentence, then recovery, and lose nothing
//! acknowledged.

mod common;

use std::time::{Duration, Instant};

use common::netns::{Netns, Network};
use common::shared::{BUCKET, S3_KEY, S3_SECRET, SharedParts};
use common::{KEY_A, TestServer, exec, session_action};
use reqwest::StatusCode;
use serde_json::{Value, json};

/// The lease of each node: short, so that a node that stops answering is replaced soon.
const LEASE_SECONDS: &str = "3";

fn node_env(parts: &SharedParts, ns: &Netns) -> Vec<(String, String)> {
    [
        ("STORE", "shared".to_owned()),
        ("REDIS_URL", parts.redis_url()),
        ("REDIS_KEY_PREFIX", "cluster:".to_owned()),
        ("S3_ENDPOINT", parts.s3_endpoint()),
        ("S3_BUCKET", BUCKET.to_owned()),
        ("S3_ACCESS_KEY_ID", S3_KEY.to_owned()),
        ("S3_SECRET_ACCESS_KEY", S3_SECRET.to_owned()),
        ("NODE_URL", format!("http://{}:8000", ns.ip)),
        ("NODE_LEASE_SECONDS", LEASE_SECONDS.to_owned()),
        // Clients reach each node by its own address: every node answers MCP for all of them.
        ("MCP_ALLOWED_HOSTS", "*".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

async fn start_node(parts: &SharedParts, ns: &Netns) -> TestServer {
    let env = node_env(parts, ns);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    TestServer::start_in_netns(ns, &env).await
}

fn py(code: &str, sid: &str) -> Value {
    json!({"lang": "py", "code": code, "session_id": sid})
}

fn stderr(body: &Value) -> &str {
    body["stderr"].as_str().unwrap_or_default()
}

fn file_id(files: &Value, name: &str) -> String {
    files
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == name)
        .unwrap_or_else(|| panic!("{name} not in {files}"))["id"]
        .as_str()
        .unwrap()
        .to_owned()
}

async fn download(node: &TestServer, sid: &str, fid: &str) -> (StatusCode, Vec<u8>) {
    let r = node.fetch(&format!("/download/{sid}/{fid}"), KEY_A).await;
    (r.status(), r.bytes().await.unwrap().to_vec())
}

#[test]
fn three_nodes_in_three_namespaces() {
    let net = Network::create(&["store", "n1", "n2", "n3"]);
    let parts = SharedParts::start_in(net.ns("store"));
    net.ns("store").run(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
            .block_on(scenario(&net, &parts))
    });
}

async fn scenario(net: &Network, parts: &SharedParts) {
    let (n1, n2, n3) = tokio::join!(
        start_node(parts, net.ns("n1")),
        start_node(parts, net.ns("n2")),
        start_node(parts, net.ns("n3")),
    );
    let mut nodes = [n1, n2, n3];

    upload_run_download_on_three_nodes(&nodes).await;
    let sid = python_state_across_nodes(&nodes).await;
    programmatic_across_nodes(&nodes).await;
    mcp_session_across_nodes(&nodes).await;
    sessions_at_once(&nodes).await;
    let suspended = program_waiting_for_tools(&nodes[0], "await add(a=1, b=2)").await;
    owner_killed(&mut nodes, &sid).await;
    program_of_a_killed_node(&nodes[1], &suspended).await;
    outages(parts, &nodes[1..]).await;
}

/// Up through node 1, a run on node 2 that reads it, the output down from node 3.
async fn upload_run_download_on_three_nodes(nodes: &[TestServer; 3]) {
    let data: Vec<u8> = (0..1_500_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let (status, up) = nodes[0]
        .upload("/upload", KEY_A, &[("input.bin", &data)], &[])
        .await;
    assert_eq!(status, StatusCode::OK, "{up}");
    let sid = up["session_id"].as_str().unwrap().to_owned();
    let code = "data = open('input.bin', 'rb').read()\n\
                open('output.bin', 'wb').write(bytes(b ^ 0x5A for b in data))\n\
                print(len(data))";
    let (status, ran) = exec(&nodes[1], KEY_A, py(code, &sid)).await;
    assert_eq!(status, StatusCode::OK, "{ran}");
    assert_eq!(ran["stdout"], "1500000\n", "{ran}");
    let out = file_id(&ran["files"], "output.bin");
    let (status, bytes) = download(&nodes[2], &sid, &out).await;
    assert_eq!(status, StatusCode::OK);
    let expected: Vec<u8> = data.iter().map(|b| b ^ 0x5A).collect();
    assert!(
        bytes == expected,
        "node 3 served other bytes than node 2 wrote"
    );
}

/// A session started on node 1 keeps its variables whichever node a call reaches: /exec,
/// /exec/stream and an interrupt are forwarded to node 1. Returns the session.
async fn python_state_across_nodes(nodes: &[TestServer; 3]) -> String {
    let (status, first) = exec(
        &nodes[0],
        KEY_A,
        json!({"lang": "py", "code": "x = 41\nopen('state.txt', 'w').write('kept')\nprint('set')"}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{first}");
    let sid = first["session_id"].as_str().unwrap().to_owned();

    let (status, second) = exec(&nodes[1], KEY_A, py("print(x + 1)", &sid)).await;
    assert_eq!(status, StatusCode::OK, "{second}");
    assert_eq!(
        second["stdout"], "42\n",
        "node 2 did not reach node 1's kernel: {second}"
    );
    assert_eq!(second["runtime_status"], "reused", "{second}");
    assert!(!stderr(&second).contains("lost"), "{second}");

    let streamed = nodes[2]
        .client
        .post(nodes[2].url("/v1/exec/stream"))
        .header("x-api-key", KEY_A)
        .json(&py("x += 1\nprint(x * 2)", &sid))
        .send()
        .await
        .unwrap();
    assert_eq!(streamed.status(), StatusCode::OK);
    let text = streamed.text().await.unwrap();
    let frames: Vec<Value> = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    assert_eq!(frames.first().unwrap()["type"], "session", "{text}");
    assert!(
        frames
            .iter()
            .any(|f| f["type"] == "stream" && f["text"] == "84\n"),
        "{text}"
    );
    assert_eq!(frames.last().unwrap()["type"], "done", "{text}");

    // A long cell sent through node 2 runs on node 1; node 3 interrupts it.
    let client = nodes[1].client.clone();
    let url = nodes[1].url("/v1/exec");
    let body = py("import time\ntime.sleep(60)", &sid);
    let long = tokio::spawn(async move {
        let r = client
            .post(url)
            .header("x-api-key", KEY_A)
            .json(&body)
            .send()
            .await
            .unwrap();
        r.json::<Value>().await.unwrap()
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, action) = session_action(&nodes[2], KEY_A, &sid, "interrupt").await;
        assert_eq!(status, StatusCode::OK, "{action}");
        if action["applied"] == true {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the cell never started: {action}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let interrupted = tokio::time::timeout(Duration::from_secs(20), long)
        .await
        .expect("the interrupted cell answers")
        .unwrap();
    assert!(
        interrupted.to_string().contains("KeyboardInterrupt"),
        "{interrupted}"
    );
    let (_, after) = exec(&nodes[2], KEY_A, py("print(x)", &sid)).await;
    assert_eq!(after["stdout"], "42\n", "{after}");
    sid
}

async fn programmatic(
    node: &TestServer,
    body: &Value,
    request_id: Option<&str>,
) -> (StatusCode, Value) {
    let mut req = node
        .client
        .post(node.url("/v1/exec/programmatic"))
        .header("x-api-key", KEY_A)
        .json(body);
    if let Some(id) = request_id {
        req = req.header("X-LibreChat-Code-Request-ID", id);
    }
    let r = req.send().await.unwrap();
    let status = r.status();
    let text = r.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text:?}")),
    )
}

/// A Python program on `node` that calls the `add` tool; its `tool_call_required` step.
async fn program_waiting_for_tools(node: &TestServer, call: &str) -> Value {
    let body = json!({
        "code": format!("r = {call}\nprint('sum', r)"),
        "tools": [{"name": "add", "description": "adds", "parameters": {"type": "object",
            "properties": {"a": {"type": "number"}, "b": {"type": "number"}}}}],
    });
    let (status, step) = programmatic(node, &body, None).await;
    assert_eq!(status, StatusCode::OK, "{step}");
    assert_eq!(step["status"], "tool_call_required", "{step}");
    step
}

fn results(step: &Value, value: Value) -> Value {
    json!({
        "continuation_token": step["continuation_token"],
        "tool_results": [{"call_id": step["tool_calls"][0]["id"], "result": value}],
    })
}

/// A program started on node 1 calls a tool; its continuation sent to node 2 resumes it on
/// node 1, and one cancelled through node 3 stops it there.
async fn programmatic_across_nodes(nodes: &[TestServer; 3]) {
    let step = program_waiting_for_tools(&nodes[0], "await add(a=1, b=2)").await;
    assert_eq!(
        step["tool_calls"][0]["input"],
        json!({"a": 1, "b": 2}),
        "{step}"
    );
    let (status, done) = programmatic(&nodes[1], &results(&step, json!(3)), None).await;
    assert_eq!(status, StatusCode::OK, "{done}");
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["stdout"], "sum 3\n", "{done}");

    let request = "cluster-cancel-0123456789";
    let body = json!({
        "code": "r = await add(a=2, b=2)\nprint('sum', r)",
        "tools": [{"name": "add", "parameters": {"type": "object"}}],
    });
    let (status, step) = programmatic(&nodes[0], &body, Some(request)).await;
    assert_eq!(step["status"], "tool_call_required", "{status} {step}");
    let cancelled = nodes[2]
        .client
        .post(nodes[2].url("/v1/exec/programmatic/cancel"))
        .header("x-api-key", KEY_A)
        .json(&json!({"request_id": request}))
        .send()
        .await
        .unwrap();
    assert_eq!(cancelled.status(), StatusCode::ACCEPTED);
    // Node 1 stopped it: the continuation learns so (or that the run is over).
    let (status, after) = programmatic(&nodes[1], &results(&step, json!(4)), None).await;
    assert!(
        (status == StatusCode::OK && after["error"] == "Programmatic execution request cancelled")
            || (status == StatusCode::NOT_FOUND
                && after["error"] == "Execution not found or expired"),
        "{status} {after}"
    );
}

fn mcp(node: &TestServer, session: Option<&str>, body: Value) -> reqwest::RequestBuilder {
    let mut req = node
        .client
        .post(node.url("/mcp"))
        .header("x-api-key", KEY_A)
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", "2025-06-18")
        .json(&body);
    if let Some(id) = session {
        req = req.header("mcp-session-id", id);
    }
    req
}

/// An MCP session opened on node 1 answers through node 2 and node 3 (forwarded to node
/// 1, a run's answer streamed back), and is ended through node 2.
async fn mcp_session_across_nodes(nodes: &[TestServer; 3]) {
    let init = json!({
        "jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": {"protocolVersion": "2025-06-18", "capabilities": {},
                   "clientInfo": {"name": "cluster-test", "version": "1"}}
    });
    let opened = mcp(&nodes[0], None, init).send().await.unwrap();
    assert_eq!(opened.status(), StatusCode::OK);
    let id = opened.headers()["mcp-session-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let _ = opened.text().await.unwrap();
    let initialized = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
    let r = mcp(&nodes[1], Some(&id), initialized).send().await.unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    let list = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"});
    let r = mcp(&nodes[2], Some(&id), list.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let text = r.text().await.unwrap();
    assert!(text.contains("execute_code"), "{text}");
    let call = json!({"jsonrpc": "2.0", "id": 3, "method": "tools/call",
        "params": {"name": "execute_code", "arguments": {"language": "bash", "code": "echo via-node-2"}}});
    let r = mcp(&nodes[1], Some(&id), call).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let text = r.text().await.unwrap();
    assert!(text.contains("via-node-2"), "{text}");
    let ended = nodes[1]
        .client
        .delete(nodes[1].url("/mcp"))
        .header("x-api-key", KEY_A)
        .header("mcp-session-id", &id)
        .send()
        .await
        .unwrap();
    assert!(ended.status().is_success(), "{}", ended.status());
    let r = mcp(&nodes[0], Some(&id), list).send().await.unwrap();
    assert_eq!(
        r.status(),
        StatusCode::NOT_FOUND,
        "the session was ended on node 1"
    );
}

/// The continuation of a program whose node was killed: a 404 that says so, at once.
async fn program_of_a_killed_node(node: &TestServer, step: &Value) {
    let (status, lost) = programmatic(node, &results(step, json!(3)), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{lost}");
    assert!(
        lost["error"]
            .as_str()
            .unwrap()
            .contains("node that ran it stopped"),
        "{lost}"
    );
}

/// 3 x 20 sessions at once: each uploads through one node, runs on the next and downloads
/// from the third. Every call succeeds and every session sees only its own bytes.
async fn sessions_at_once(nodes: &[TestServer; 3]) {
    let tasks = (0..60usize).map(|i| async move {
        let content = format!("session {i}: {}\n", "abcdefgh".repeat(i * 50));
        let (status, up) = nodes[i % 3]
            .upload("/upload", KEY_A, &[("in.txt", content.as_bytes())], &[])
            .await;
        assert_eq!(status, StatusCode::OK, "upload {i}: {up}");
        let sid = up["session_id"].as_str().unwrap().to_owned();
        let (status, ran) = exec(
            &nodes[(i + 1) % 3],
            KEY_A,
            json!({"lang": "bash", "session_id": sid,
                   "code": "cat in.txt in.txt > out.txt; ls"}),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "run {i}: {ran}");
        assert_eq!(ran["stdout"], "in.txt\nout.txt\n", "run {i}: {ran}");
        let out = file_id(&ran["files"], "out.txt");
        let (status, bytes) = download(&nodes[(i + 2) % 3], &sid, &out).await;
        assert_eq!(status, StatusCode::OK, "download {i}");
        assert!(
            bytes == format!("{content}{content}").as_bytes(),
            "session {i} got bytes that are not its own"
        );
    });
    futures::future::join_all(tasks).await;
}

/// The node that holds the session's kernel dies without a word: the next call, through
/// another node, runs on a new kernel with every file, and says the state was lost.
async fn owner_killed(nodes: &mut [TestServer; 3], sid: &str) {
    nodes[0].kill();
    let killed = Instant::now();
    let (status, next) = exec(
        &nodes[1],
        KEY_A,
        py("print('x' in dir(), open('state.txt').read())", sid),
    )
    .await;
    let failover = killed.elapsed();
    assert_eq!(status, StatusCode::OK, "{next}");
    assert_eq!(next["stdout"], "False kept\n", "{next}");
    assert!(
        stderr(&next).contains("The previous Python state of this session was lost"),
        "{next}"
    );
    assert_eq!(next["runtime_status"], "new", "{next}");
    eprintln!("cluster: first call after SIGKILL of the owner answered in {failover:?}");
    // Node 2 holds it now: node 3 reaches its kernel.
    let (_, set) = exec(&nodes[1], KEY_A, py("y = 5", sid)).await;
    assert_eq!(set["run"]["status"], "success", "{set}");
    let (_, via3) = exec(&nodes[2], KEY_A, py("print(y)", sid)).await;
    assert_eq!(via3["stdout"], "5\n", "{via3}");
    let list = nodes[2].get_json(&format!("/files/{sid}"), KEY_A).await;
    assert_eq!(common::names(&list), ["state.txt"], "{list}");
}

/// Redis, then SeaweedFS, stopped and restarted while calls keep coming to two nodes.
async fn outages(parts: &SharedParts, nodes: &[TestServer]) {
    for (what, part) in [("Redis", 0), ("S3", 1)] {
        let (status, up) = nodes[0]
            .upload("/upload", KEY_A, &[("before.txt", b"acknowledged")], &[])
            .await;
        assert_eq!(status, StatusCode::OK, "{up}");
        let sid = up["session_id"].as_str().unwrap().to_owned();
        let mut acknowledged = vec!["before.txt".to_owned()];
        let mut refused = 0;
        let mut recovered = false;
        let stop_at = 3;
        let start_at = 8;
        for round in 0..40 {
            if round == stop_at {
                if part == 0 {
                    parts.stop_redis();
                } else {
                    parts.stop_weed();
                }
            }
            if round == start_at {
                if part == 0 {
                    parts.start_redis();
                } else {
                    parts.start_weed();
                }
            }
            let name = format!("r{round}.txt");
            let (status, body) = nodes[round % 2]
                .upload(
                    "/upload",
                    KEY_A,
                    &[(&name, name.as_bytes())],
                    &[("session_id", &sid)],
                )
                .await;
            match status {
                StatusCode::OK => acknowledged.push(name),
                StatusCode::SERVICE_UNAVAILABLE => {
                    assert!(
                        (stop_at..start_at + 20).contains(&round),
                        "a 503 while {what} was up: {body}"
                    );
                    assert_eq!(body["error"], "storage_unavailable", "{body}");
                    // It names what is down. (On a loaded machine the other part may time out
                    // once meanwhile: a 503 that names it is as right, but does not count.)
                    let detail = body["detail"].as_str().unwrap();
                    assert!(detail.contains("Redis") || detail.contains("S3"), "{body}");
                    if detail.contains(what) {
                        refused += 1;
                    }
                }
                other => panic!("{other} while {what} restarted: {body}"),
            }
            recovered = round >= start_at && status == StatusCode::OK;
            if recovered && round >= start_at + 3 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
        assert!(refused > 0, "no call noticed that {what} was down");
        assert!(recovered, "calls still fail after {what} came back");
        // Everything acknowledged is there, through either node, and runs see it.
        for node in nodes {
            let list = node.get_json(&format!("/files/{sid}"), KEY_A).await;
            let mut names = common::names(&list);
            names.sort();
            let mut want = acknowledged.clone();
            want.sort();
            assert_eq!(names, want, "after the {what} restart: {list}");
        }
        let (status, ran) = exec(
            &nodes[1],
            KEY_A,
            json!({"lang": "bash", "session_id": sid, "code": "cat before.txt"}),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{ran}");
        assert_eq!(ran["stdout"], "acknowledged", "{ran}");
    }
}
