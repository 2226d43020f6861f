//! Programmatic tool calling (`/exec/programmatic`): the official API's wire contract and
//! errors, and what this server does beyond it: a tool call suspends the running program
//! and the continuation resumes it, so nothing runs twice. Also: other tenants' tokens,
//! expiry, the time limit, cancellation, and programs that forge the helper's messages.

mod common;

use std::time::{Duration, Instant};

use common::{KEY_A, KEY_B, TestServer, exec};
use reqwest::StatusCode;
use serde_json::{Value, json};

async fn ptc(server: &TestServer, key: &str, body: &Value) -> (StatusCode, Value) {
    ptc_at(server, "/v1/exec/programmatic", key, body, None).await
}

async fn ptc_at(
    server: &TestServer,
    path: &str,
    key: &str,
    body: &Value,
    request_id: Option<&str>,
) -> (StatusCode, Value) {
    let mut req = server
        .client
        .post(server.url(path))
        .header("x-api-key", key)
        .json(body);
    if let Some(id) = request_id {
        req = req.header("X-LibreChat-Code-Request-ID", id);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status();
    let text = resp.text().await.unwrap();
    let value = serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text:?}"));
    (status, value)
}

fn tool(name: &str, params: &[&str]) -> Value {
    let properties: serde_json::Map<String, Value> = params
        .iter()
        .map(|p| ((*p).to_owned(), json!({"type": "string"})))
        .collect();
    json!({
        "name": name,
        "description": format!("the {name} tool"),
        "parameters": {"type": "object", "properties": properties, "required": params},
    })
}

/// Answer every call the way `answer` says, until the program ends; the rounds it took
/// and its final answer.
async fn drive(
    server: &TestServer,
    first: Value,
    answer: impl Fn(&Value) -> Value,
) -> (usize, Value) {
    let (status, mut step) = ptc(server, KEY_A, &first).await;
    assert_eq!(status, 200, "{step}");
    let mut rounds = 0;
    while step["status"] == "tool_call_required" {
        rounds += 1;
        assert!(rounds < 50, "no end: {step}");
        let results: Vec<Value> = step["tool_calls"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                let mut r = answer(c);
                r["call_id"] = c["id"].clone();
                r
            })
            .collect();
        let (status, next) = ptc(
            server,
            KEY_A,
            &json!({"continuation_token": step["continuation_token"], "tool_results": results}),
        )
        .await;
        assert_eq!(status, 200, "{next}");
        step = next;
    }
    (rounds, step)
}

/// A sleep no other process runs: its argument marks the program's process.
fn marker_seconds() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("{}{:09}.5", 600 + std::process::id() % 1000, nanos)
}

fn processes_with(marker: &str) -> usize {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok())
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .filter(|c| c.windows(marker.len()).any(|w| w == marker.as_bytes()))
        .count()
}

async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn bad_requests_get_the_official_errors_at_both_prefixes() {
    let server = TestServer::start(&[]).await;
    let tools = json!([tool("get_weather", &["city"])]);
    let cases: Vec<(Value, u16, &str)> = vec![
        (
            json!({"code": "x", "tools": tools, "language": "ruby"}),
            400,
            "Unsupported language \"ruby\"; supported values are \"python\" and \"bash\"",
        ),
        (
            json!({"code": "x", "tools": tools, "lang": "py"}),
            400,
            "Unsupported language \"py\"; supported values are \"python\" and \"bash\"",
        ),
        (
            json!({"code": "x", "tools": tools, "language": 5}),
            400,
            "Unsupported language \"5\"; supported values are \"python\" and \"bash\"",
        ),
        (json!({"tools": tools}), 400, "Missing required field: code"),
        (
            json!({"code": "x", "tools": []}),
            400,
            "Missing required field: tools (must be a non-empty array)",
        ),
        (
            json!({"code": "x", "tools": (0..101).map(|i| tool(&format!("t{i}"), &[])).collect::<Vec<_>>()}),
            400,
            "Too many tools provided (101). Maximum is 100.",
        ),
        (
            json!({"code": "x", "tools": [tool("a-b", &[]), tool("a b", &[])]}),
            400,
            "Tool names \"a-b\" and \"a b\" normalize to the same function identifier \"a_b\"; rename one to avoid collision",
        ),
        (
            json!({"continuation_token": "abc"}),
            400,
            "tool_results must be an array when continuation_token is provided",
        ),
        (
            json!({"continuation_token": "abc", "tool_results": []}),
            400,
            "tool_results must be a non-empty array; resubmit with at least one result per pending tool call",
        ),
        (
            json!({"continuation_token": "not-a-token", "tool_results": [{"call_id": "call_001", "result": 1}]}),
            400,
            "Invalid continuation token",
        ),
        (
            json!({"continuation_token": "A".repeat(42), "tool_results": [{"call_id": "call_001", "result": 1}]}),
            404,
            "Execution not found or expired",
        ),
        (
            json!({"code": "x", "tools": tools, "timeout": -5}),
            400,
            "timeout must be a positive number of milliseconds",
        ),
    ];
    for prefix in ["", "/v1"] {
        for (body, status, error) in &cases {
            let (got, answer) = ptc_at(
                &server,
                &format!("{prefix}/exec/programmatic"),
                KEY_A,
                body,
                None,
            )
            .await;
            assert_eq!(got.as_u16(), *status, "{body} -> {answer}");
            assert_eq!(answer["error"], *error, "{body}");
            let detail = answer["detail"].as_str().unwrap();
            assert!(detail.ends_with('.'), "{detail}");
        }
    }
    // Not JSON at all.
    let resp = server
        .client
        .post(server.url("/exec/programmatic"))
        .header("x-api-key", KEY_A)
        .body("not json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    // The request id header has a shape.
    let (status, answer) = ptc_at(
        &server,
        "/v1/exec/programmatic",
        KEY_A,
        &json!({"code": "x", "tools": tools}),
        Some("short"),
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(answer["error"], "Invalid programmatic request ID");
    // So does the cancellation's.
    for body in [json!({}), json!({"request_id": "bad id"}), json!([1])] {
        let (status, answer) =
            ptc_at(&server, "/exec/programmatic/cancel", KEY_A, &body, None).await;
        assert_eq!(status, 400, "{body}");
        assert_eq!(answer["error"], "Invalid or missing request_id");
    }
    // Without a key: 401 like every route.
    let resp = server
        .client
        .post(server.url("/v1/exec/programmatic"))
        .json(&json!({"code": "x", "tools": tools}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
}

#[tokio::test]
async fn a_python_program_is_suspended_at_each_tool_call_and_resumed_never_replayed() {
    let server = TestServer::start(&[("KERNEL_POOL_SIZE", "1")]).await;
    // The session exists first, with a file the program reads.
    let (status, body) = exec(
        &server,
        KEY_A,
        json!({"lang": "py", "code": "open('/mnt/data/seed.txt', 'w').write('seed')"}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let sid = body["session_id"].as_str().unwrap().to_owned();
    let code = r#"
with open("/mnt/data/log.txt", "a") as f:
    f.write("before\n")
seed = open("/mnt/data/seed.txt").read()
sf, ny = await asyncio.gather(get_weather(city="SF"), get_weather(city="NY"))
print("gathered", sf["city"], ny["city"])
again = await get_weather(city=sf["city"] + "-" + seed)
print("chained", again["city"])
try:
    await explode()
except ToolExecutionError as err:
    print("caught:", err)
with open("/mnt/data/log.txt", "a") as f:
    f.write("after\n")
print("done")
"#;
    let first = json!({
        "code": code,
        "tools": [tool("get-weather", &["city"]), tool("explode", &[])],
        "session_id": sid,
        "timeout": 60000,
    });
    let mut batches = Vec::new();
    let (status, mut step) = ptc(&server, KEY_A, &first).await;
    assert_eq!(status, 200, "{step}");
    while step["status"] == "tool_call_required" {
        assert_eq!(step["session_id"], sid, "{step}");
        let calls = step["tool_calls"].as_array().unwrap().clone();
        batches.push(
            calls
                .iter()
                .map(|c| format!("{}({})", c["name"].as_str().unwrap(), c["input"]))
                .collect::<Vec<_>>(),
        );
        // The program is suspended, not finished and not replayed: "before" is written once.
        let log =
            std::fs::read_to_string(server.data_dir.join("sessions").join(&sid).join("log.txt"))
                .unwrap();
        assert_eq!(log, "before\n");
        let results: Vec<Value> = calls
            .iter()
            .map(|c| match c["name"].as_str().unwrap() {
                "explode" => json!({"call_id": c["id"], "result": null, "is_error": true, "error_message": "the tool blew up"}),
                _ => json!({"call_id": c["id"], "result": {"city": c["input"]["city"], "temp": 21}}),
            })
            .collect();
        let (status, next) = ptc(
            &server,
            KEY_A,
            &json!({"continuation_token": step["continuation_token"], "tool_results": results}),
        )
        .await;
        assert_eq!(status, 200, "{next}");
        // A token is good once.
        let (status, again) = ptc(
            &server,
            KEY_A,
            &json!({"continuation_token": step["continuation_token"], "tool_results": [{"call_id": "call_001", "result": 1}]}),
        )
        .await;
        assert_eq!(status, 404, "{again}");
        step = next;
    }
    assert_eq!(
        batches,
        vec![
            vec![
                r#"get-weather({"city":"SF"})"#.to_owned(),
                r#"get-weather({"city":"NY"})"#.to_owned()
            ],
            vec![r#"get-weather({"city":"SF-seed"})"#.to_owned()],
            vec!["explode({})".to_owned()],
        ],
        "parallel calls come in one round, each call once"
    );
    assert_eq!(step["status"], "completed", "{step}");
    assert_eq!(
        step["stdout"],
        "gathered SF NY\nchained SF-seed\ncaught: the tool blew up\ndone\n"
    );
    assert_eq!(step["stderr"], "");
    assert_eq!(step["session_id"], sid);
    let names = common::names(&step["files"]);
    assert_eq!(names, ["log.txt"], "{step}");
    let log = std::fs::read_to_string(server.data_dir.join("sessions").join(&sid).join("log.txt"))
        .unwrap();
    assert_eq!(log, "before\nafter\n", "each line exactly once");
    // The kernel is the session's: a plain call on it still works.
    let (status, body) = exec(
        &server,
        KEY_A,
        json!({"lang": "py", "code": "print(open('/mnt/data/log.txt').read().count('before'))", "session_id": sid}),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(body["stdout"], "1\n", "{body}");
    // The session's notebook shows the program as the client sent it, without the helper
    // around it or its tool-call messages.
    let nb: Value = server
        .fetch(&format!("/v1/sessions/{sid}/notebook"), KEY_A)
        .await
        .json()
        .await
        .unwrap();
    let cell = nb["cells"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["source"].to_string().contains("explode"))
        .unwrap_or_else(|| panic!("no cell with the program: {nb}"));
    let source: String = match &cell["source"] {
        Value::Array(lines) => lines.iter().filter_map(Value::as_str).collect(),
        other => other.as_str().unwrap().to_owned(),
    };
    assert_eq!(source, code);
    assert!(!nb.to_string().contains("vnd.code-interpreter.ptc"), "{nb}");
}

#[tokio::test]
async fn python_failures_come_back_as_the_official_error_status() {
    let server = TestServer::start(&[("KERNEL_POOL_SIZE", "1")]).await;
    let tools = json!([tool("lookup", &["q"])]);
    // An exception the program does not catch: the traceback, from the program's own line.
    let (_, step) = drive(
        &server,
        json!({"code": "print('partial')\nr = await lookup(q='x')\nraise ValueError(f\"bad {r}\")", "tools": tools}),
        |_| json!({"result": 7}),
    )
    .await;
    assert_eq!(step["status"], "error", "{step}");
    assert_eq!(step["error"], "Sandbox exited with code 1");
    assert_eq!(step["stdout"], "partial\n");
    let stderr = step["stderr"].as_str().unwrap();
    assert!(
        stderr.contains("line 3") && stderr.ends_with("ValueError: bad 7\n"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("programmatic-tools"),
        "helper frames leak: {stderr}"
    );
    // A tool error not caught: the tool's message in the exception.
    let (_, step) = drive(
        &server,
        json!({"code": "await lookup(q='x')", "tools": tools}),
        |_| json!({"result": null, "is_error": true, "error_message": "no such row"}),
    )
    .await;
    assert_eq!(step["status"], "error");
    assert!(
        step["stderr"]
            .as_str()
            .unwrap()
            .ends_with("ToolExecutionError: no such row\n"),
        "{step}"
    );
    // sys.exit(0) is a clean end; sys.exit(3) is exit code 3.
    let (rounds, step) = drive(
        &server,
        json!({"code": "import sys\nprint('bye')\nsys.exit(0)", "tools": tools}),
        |_| json!({}),
    )
    .await;
    assert_eq!(
        (rounds, step["status"].as_str()),
        (0, Some("completed")),
        "{step}"
    );
    let (_, step) = drive(
        &server,
        json!({"code": "import sys\nsys.exit(3)", "tools": tools}),
        |_| json!({}),
    )
    .await;
    assert_eq!(step["error"], "Sandbox exited with code 3", "{step}");
    // A syntax error.
    let (_, step) = drive(
        &server,
        json!({"code": "def f(:\n  pass", "tools": tools}),
        |_| json!({}),
    )
    .await;
    assert_eq!(step["status"], "error");
    assert!(
        step["stderr"].as_str().unwrap().contains("SyntaxError"),
        "{step}"
    );
    // Top-level `return` works (as in the official API's async wrapper).
    let (_, step) = drive(
        &server,
        json!({"code": "x = await lookup(q='a')\nif x:\n    print('early')\n    return\nprint('late')", "tools": tools}),
        |_| json!({"result": true}),
    )
    .await;
    assert_eq!(step["status"], "completed", "{step}");
    assert_eq!(step["stdout"], "early\n");
    // Positional arguments map only where that is unambiguous.
    let (_, step) = drive(
        &server,
        json!({"code": "print(await lookup('pos'))", "tools": tools}),
        |c| json!({"result": c["input"]["q"]}),
    )
    .await;
    assert_eq!(step["stdout"], "pos\n", "{step}");
}

#[tokio::test]
async fn a_bash_program_calls_tools_as_shell_functions() {
    let server = TestServer::start(&[]).await;
    let code = r#"
echo start >> /mnt/data/log.txt
weather=$(get_weather '{"city":"SF"}')
echo "weather: $weather"
{ a=$(get_weather '{"city":"A"}'); echo "$a" > /mnt/data/a.json; } &
{ b=$(get_weather '{"city":"B"}'); echo "$b" > /mnt/data/b.json; } &
wait
cat /mnt/data/a.json /mnt/data/b.json
if out=$(fail_tool '{}'); then echo "no error?"; else echo "failed as expected"; fi
echo end >> /mnt/data/log.txt
"#;
    let (rounds, step) = drive(
        &server,
        json!({"lang": "bash", "code": code, "tools": [tool("get-weather", &["city"]), tool("fail.tool", &[])]}),
        |c| match c["name"].as_str().unwrap() {
            "fail.tool" => json!({"result": null, "is_error": true, "error_message": "broken"}),
            _ => json!({"result": {"city": c["input"]["city"], "ok": true}}),
        },
    )
    .await;
    assert_eq!(step["status"], "completed", "{step}");
    let stdout = step["stdout"].as_str().unwrap();
    assert!(
        stdout.starts_with("weather: {\"city\":\"SF\",\"ok\":true}\n"),
        "{stdout}"
    );
    assert!(
        stdout.contains("{\"city\":\"A\",\"ok\":true}\n{\"city\":\"B\",\"ok\":true}\n"),
        "{stdout}"
    );
    assert!(stdout.ends_with("failed as expected\n"), "{stdout}");
    assert_eq!(step["stderr"], "broken\n");
    // SF, then A and B (together when both call within the batching window, which a busy
    // machine does not promise), then the failing tool.
    assert!((3..=4).contains(&rounds), "{rounds} rounds");
    let sid = step["session_id"].as_str().unwrap();
    let log = std::fs::read_to_string(server.data_dir.join("sessions").join(sid).join("log.txt"))
        .unwrap();
    assert_eq!(log, "start\nend\n");
    // An input that is not a JSON object is refused in the program, not sent to the client.
    let (rounds, step) = drive(
        &server,
        json!({"lang": "bash", "code": "get_weather 'not json' || echo refused", "tools": [tool("get_weather", &[])]}),
        |_| json!({"result": 1}),
    )
    .await;
    assert_eq!(rounds, 0);
    assert_eq!(step["stdout"], "refused\n", "{step}");
    assert!(
        step["stderr"]
            .as_str()
            .unwrap()
            .contains("must be a JSON object"),
        "{step}"
    );
    // A failing program is the official error.
    let (_, step) = drive(
        &server,
        json!({"language": "bash", "code": "echo out; exit 4", "tools": [tool("t", &[])]}),
        |_| json!({}),
    )
    .await;
    assert_eq!(step["status"], "error");
    assert_eq!(step["error"], "Sandbox exited with code 4");
    assert_eq!(step["stdout"], "out\n");
}

#[tokio::test]
async fn another_tenants_token_is_forbidden_and_the_owner_can_still_continue() {
    let server = TestServer::start(&[]).await;
    let (status, step) = ptc(
        &server,
        KEY_A,
        &json!({"lang": "bash", "code": "r=$(t '{}'); echo \"got $r\"", "tools": [tool("t", &[])]}),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(step["status"], "tool_call_required", "{step}");
    let token = step["continuation_token"].clone();
    let results = json!([{"call_id": step["tool_calls"][0]["id"], "result": "yes"}]);
    let (status, answer) = ptc(
        &server,
        KEY_B,
        &json!({"continuation_token": token, "tool_results": results}),
    )
    .await;
    assert_eq!(status, 403, "{answer}");
    assert_eq!(answer["error"], "Forbidden");
    // A result for a call that was never made is refused, and the token still works.
    let (status, answer) = ptc(
        &server,
        KEY_A,
        &json!({"continuation_token": token, "tool_results": [{"call_id": "call_999", "result": 1}]}),
    )
    .await;
    assert_eq!(status, 400, "{answer}");
    let (status, done) = ptc(
        &server,
        KEY_A,
        &json!({"continuation_token": token, "tool_results": results}),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["stdout"], "got \"yes\"\n");
}

#[tokio::test]
async fn a_continuation_that_never_comes_ends_the_run_at_its_timeout() {
    let server = TestServer::start(&[("KERNEL_POOL_SIZE", "1")]).await;
    let mark = marker_seconds();
    let code = format!("r=$(t '{{}}')\nsleep {mark}");
    for (lang, code) in [
        ("bash", code.as_str()),
        ("python", "print('waiting')\nawait t()\nprint('never')"),
    ] {
        let (status, step) = ptc(
            &server,
            KEY_A,
            &json!({"language": lang, "code": code, "tools": [tool("t", &[])], "timeout": 1500}),
        )
        .await;
        assert_eq!(status, 200);
        assert_eq!(step["status"], "tool_call_required", "{step}");
        let sid = step["session_id"].as_str().unwrap().to_owned();
        // The suspended program holds its session: a plain call waits for it to end.
        let started = Instant::now();
        let (status, body) = exec(
            &server,
            KEY_A,
            json!({"lang": "bash", "code": "echo next", "session_id": sid}),
        )
        .await;
        assert_eq!(status, 200);
        assert_eq!(body["stdout"], "next\n", "{body}");
        assert!(
            started.elapsed() >= Duration::from_millis(500),
            "the call did not wait for the suspended program"
        );
        // By then the program was ended: its token is gone.
        let (status, answer) = ptc(
            &server,
            KEY_A,
            &json!({"continuation_token": step["continuation_token"], "tool_results": [{"call_id": step["tool_calls"][0]["id"], "result": 1}]}),
        )
        .await;
        assert_eq!(status, 404, "{answer}");
        assert_eq!(answer["error"], "Execution not found or expired");
    }
    assert_eq!(
        processes_with(&mark),
        0,
        "the bash program was never resumed, so never slept"
    );
}

#[tokio::test]
async fn a_program_that_runs_past_its_timeout_without_calling_a_tool_is_stopped() {
    let server = TestServer::start(&[("KERNEL_POOL_SIZE", "1")]).await;
    for (lang, code) in [
        ("python", "import time\nprint('slow')\ntime.sleep(30)"),
        ("bash", "echo slow; sleep 30"),
    ] {
        let (status, step) = ptc(
            &server,
            KEY_A,
            &json!({"language": lang, "code": code, "tools": [tool("t", &[])], "timeout": 1000}),
        )
        .await;
        assert_eq!(status, 200);
        assert_eq!(step["status"], "error", "{step}");
        assert_eq!(step["error"], "Time limit exceeded");
        assert_eq!(step["stdout"], "slow\n");
        assert!(
            step["stderr"]
                .as_str()
                .unwrap()
                .contains("[sandbox] The program ran for more than its time limit"),
            "{step}"
        );
    }
}

#[tokio::test]
async fn cancel_stops_the_run_of_a_request_and_the_session_goes_on() {
    let server = TestServer::start(&[("KERNEL_POOL_SIZE", "1")]).await;
    let mark = marker_seconds();
    let request_id = "0f8fad5b-d9cb-469f-a165-70867728950e";
    let body = json!({
        "language": "bash",
        "code": format!("r=$(t '{{}}'); echo \"$r\"; sleep {mark}"),
        "tools": [tool("t", &[])],
        "timeout": 120000,
    });
    let (_, step) = ptc(&server, KEY_A, &body).await;
    assert_eq!(step["status"], "tool_call_required");
    let sid = step["session_id"].as_str().unwrap().to_owned();
    let continuation = json!({"continuation_token": step["continuation_token"], "tool_results": [{"call_id": step["tool_calls"][0]["id"], "result": 1}]});
    let run = {
        let client = server.client.clone();
        let url = server.url("/v1/exec/programmatic");
        tokio::spawn(async move {
            let resp = client
                .post(url)
                .header("x-api-key", KEY_A)
                .header("X-LibreChat-Code-Request-ID", request_id)
                .json(&continuation)
                .send()
                .await
                .unwrap();
            let text = resp.text().await.unwrap();
            serde_json::from_str::<Value>(&text).unwrap()
        })
    };
    wait_until("the resumed program to sleep", || processes_with(&mark) > 0).await;
    // Another tenant cannot cancel it.
    let (status, answer) = ptc_at(
        &server,
        "/v1/exec/programmatic/cancel",
        KEY_B,
        &json!({"request_id": request_id}),
        None,
    )
    .await;
    assert_eq!(status, 403, "{answer}");
    assert!(processes_with(&mark) > 0);
    let (status, answer) = ptc_at(
        &server,
        "/exec/programmatic/cancel",
        KEY_A,
        &json!({"request_id": request_id}),
        None,
    )
    .await;
    assert_eq!(status, 202, "{answer}");
    assert_eq!(answer["status"], "cancellation_requested");
    let result = tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .expect("the cancelled request answers")
        .unwrap();
    assert_eq!(result["status"], "error", "{result}");
    assert_eq!(result["error"], "Programmatic execution request cancelled");
    assert_eq!(
        processes_with(&mark),
        0,
        "the program outlived its cancellation"
    );
    let (status, body) = exec(
        &server,
        KEY_A,
        json!({"lang": "bash", "code": "echo next", "session_id": sid}),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(body["stdout"], "next\n");

    // A Python program cancelled mid-run: its kernel's state survives.
    let (_, body) = exec(&server, KEY_A, json!({"lang": "py", "code": "kept = 41"})).await;
    let sid = body["session_id"].as_str().unwrap().to_owned();
    let request_id = "python-cancel-request-0001";
    let run = {
        let client = server.client.clone();
        let url = server.url("/v1/exec/programmatic");
        let body = json!({"code": "import time\nprint('started', flush=True)\ntime.sleep(600)", "tools": [tool("t", &[])], "session_id": sid, "timeout": 120000});
        tokio::spawn(async move {
            let resp = client
                .post(url)
                .header("x-api-key", KEY_A)
                .header("X-LibreChat-Code-Request-ID", request_id)
                .json(&body)
                .send()
                .await
                .unwrap();
            serde_json::from_str::<Value>(&resp.text().await.unwrap()).unwrap()
        })
    };
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (status, _) = ptc_at(
        &server,
        "/exec/programmatic/cancel",
        KEY_A,
        &json!({"request_id": request_id}),
        None,
    )
    .await;
    assert_eq!(status, 202);
    let result = tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .expect("the cancelled request answers")
        .unwrap();
    assert_eq!(
        result["error"], "Programmatic execution request cancelled",
        "{result}"
    );
    let (_, body) = exec(
        &server,
        KEY_A,
        json!({"lang": "py", "code": "print(kept + 1)", "session_id": sid}),
    )
    .await;
    assert_eq!(body["stdout"], "42\n", "{body}");

    // A cancellation that arrives before its request: the request is refused.
    let early = "cancelled-before-it-came-0001";
    let (status, _) = ptc_at(
        &server,
        "/exec/programmatic/cancel",
        KEY_A,
        &json!({"request_id": early}),
        None,
    )
    .await;
    assert_eq!(status, 202);
    let (status, answer) = ptc_at(
        &server,
        "/exec/programmatic",
        KEY_A,
        &json!({"language": "bash", "code": "echo ran > /mnt/data/ran.txt", "tools": [tool("t", &[])]}),
        Some(early),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        answer["error"], "Programmatic execution request cancelled",
        "{answer}"
    );
}

#[tokio::test]
async fn forged_helper_messages_are_checked_and_cannot_reach_the_host() {
    let server = TestServer::start(&[("KERNEL_POOL_SIZE", "1")]).await;
    // Python: the program digs out the run's token and announces a tool it was not given.
    let forge = r#"
import sys, json
from IPython.display import publish_display_data
token = json.loads(sys._getframe().f_back.f_globals["__ci_args"][0])["token"]
publish_display_data({"application/vnd.code-interpreter.ptc+json": {"token": "wrong", "calls": []}})
publish_display_data({"application/vnd.code-interpreter.ptc+json": {"token": token, "calls": [{"id": "call_900", "name": "rm_rf", "input": {}}]}})
await t()
"#;
    let (_, step) = drive(
        &server,
        json!({"code": forge, "tools": [tool("t", &[])]}),
        |_| json!({}),
    )
    .await;
    assert_eq!(step["status"], "error", "{step}");
    assert_eq!(
        step["error"],
        "Sandbox requested an unregistered tool: rm_rf"
    );

    // bash: calls through links and other files the server must not follow.
    let canary_dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        canary_dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let canary = canary_dir.path().join("canary.txt");
    std::fs::write(&canary, "untouched").unwrap();
    let code = format!(
        r#"
d=/run/ptc
ln -s /etc/passwd "$d/1-1.in"
mkfifo "$d/1-1.out"; exec {{r1}}<>"$d/1-1.out"
printf '1-1 0\n' > "$d/calls"
IFS= read -r -u "$r1" status; IFS= read -r -u "$r1" len; msg=$(head -c "$len" <&"$r1")
echo "link: $status $msg"
printf '{{}}' > "$d/2-2.in"
ln -s {canary} "$d/2-2.out"
printf '2-2 0\n' > "$d/calls"
printf 'garbage\n' > "$d/calls"
printf '3-3 99\n' > "$d/calls"
printf '%0200d\n' 0 > "$d/calls"
echo sent
"#,
        canary = canary.display()
    );
    let (rounds, step) = drive(
        &server,
        json!({"language": "bash", "code": code, "tools": [tool("t", &[])]}),
        |_| json!({"result": "OVERWRITTEN"}),
    )
    .await;
    assert_eq!(step["status"], "completed", "{step}");
    let stdout = step["stdout"].as_str().unwrap();
    assert!(stdout.starts_with("link: error "), "{stdout}");
    assert!(
        !stdout.contains("root:"),
        "a linked file was read: {stdout}"
    );
    assert!(rounds <= 1, "{rounds}");
    assert_eq!(std::fs::read_to_string(&canary).unwrap(), "untouched");
}

/// Scratch directories (a bash run's FIFOs and tool functions live in one) left in the
/// server's runs directory.
fn scratch_dirs(server: &TestServer) -> Vec<String> {
    std::fs::read_dir(server.data_dir.join("runs"))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("scratch-"))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn hostile_tool_results_are_refused_or_delivered_verbatim_and_held_inputs_are_bounded() {
    let server = TestServer::start(&[("KERNEL_POOL_SIZE", "1")]).await;
    // Bodies that are not what the route takes.
    for body in [
        &b"not json at all"[..],
        b"[1,2,3]",
        b"{\"continuation_token\": 5}",
    ] {
        let resp = server
            .client
            .post(server.url("/v1/exec/programmatic"))
            .header("x-api-key", KEY_A)
            .header("content-type", "application/json")
            .body(body.to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 400, "{:?}", String::from_utf8_lossy(body));
    }
    let deep = format!("{}1{}", "[".repeat(5000), "]".repeat(5000));
    let resp = server
        .client
        .post(server.url("/v1/exec/programmatic"))
        .header("x-api-key", KEY_A)
        .header("content-type", "application/json")
        .body(format!(
            r#"{{"continuation_token": "{}", "tool_results": [{{"call_id": "call_001", "result": {deep}}}]}}"#,
            "a".repeat(42)
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400, "a 5000-deep result");

    let code = r#"
r = await t()
print(len(r["big"]), r["odd"] == "\x00<ptc>\u2028" + "\"}", r["mime"])
with open("/mnt/data/after.txt", "a") as f:
    f.write("after\n")
"#;
    let (status, step) = ptc(
        &server,
        KEY_A,
        &json!({"code": code, "tools": [tool("t", &[])], "timeout": 60000}),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(step["status"], "tool_call_required", "{step}");
    let sid = step["session_id"].as_str().unwrap().to_owned();
    let id = step["tool_calls"][0]["id"].clone();
    let token = step["continuation_token"].clone();
    // Over 5 MiB: 413, and nothing reached the program.
    let huge = "x".repeat(5 * 1024 * 1024 + 1);
    let (status, answer) = ptc(
        &server,
        KEY_A,
        &json!({"continuation_token": token, "tool_results": [{"call_id": id, "result": huge}]}),
    )
    .await;
    assert_eq!(status, 413, "{answer}");
    drop(huge);
    // A result that looks like the helper's own messages is data: delivered as sent. Two
    // continuations at once with the same token: one resumes the program, once.
    let result = json!({
        "big": "y".repeat(4 * 1024 * 1024),
        "odd": "\u{0}<ptc>\u{2028}\"}",
        "mime": {"application/vnd.code-interpreter.ptc+json": {"token": "x", "calls": []}},
    });
    let body =
        json!({"continuation_token": token, "tool_results": [{"call_id": id, "result": result}]});
    let (a, b) = tokio::join!(ptc(&server, KEY_A, &body), ptc(&server, KEY_A, &body));
    let (done, other) = if a.0 == 200 { (a, b) } else { (b, a) };
    assert_eq!(done.0, 200, "{}", done.1);
    assert!([404, 409].contains(&other.0.as_u16()), "{other:?}");
    assert_eq!(done.1["status"], "completed", "{}", done.1);
    assert_eq!(
        done.1["stdout"],
        "4194304 True {'application/vnd.code-interpreter.ptc+json': {'calls': [], 'token': 'x'}}\n"
    );
    let after = std::fs::read_to_string(
        server
            .data_dir
            .join("sessions")
            .join(&sid)
            .join("after.txt"),
    )
    .unwrap();
    assert_eq!(after, "after\n", "the program went on once");

    // The inputs of calls waiting for results are bounded together (the server holds them
    // while the client runs the tools): ten calls of 0.9 MB at once stop the run.
    let code = r#"
big = "z" * 900_000
await asyncio.gather(*[t(s=big) for _ in range(10)])
print("never")
"#;
    let (status, step) = ptc(
        &server,
        KEY_A,
        &json!({"code": code, "tools": [tool("t", &["s"])], "session_id": sid}),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(step["status"], "error", "{}", &step.to_string()[..300]);
    assert_eq!(step["error"], "Execution failed or timed out");
    assert!(
        step["stderr"]
            .as_str()
            .unwrap()
            .contains("bytes of input together and it was stopped"),
        "{}",
        step["stderr"]
    );
    // The session's kernel goes on.
    let (_, body) = exec(
        &server,
        KEY_A,
        json!({"lang": "py", "code": "print(1 + 1)", "session_id": sid}),
    )
    .await;
    assert_eq!(body["stdout"], "2\n", "{body}");
}

#[tokio::test]
async fn a_run_never_continued_frees_its_slot_and_leaves_nothing_behind() {
    let server =
        TestServer::start(&[("KERNEL_POOL_SIZE", "0"), ("MAX_CONCURRENT_RUNS", "1")]).await;
    let mark = marker_seconds();
    let (status, step) = ptc(
        &server,
        KEY_A,
        &json!({"language": "bash", "code": format!("r=$(t '{{}}')\nsleep {mark}"), "tools": [tool("t", &[])], "timeout": 2000}),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(step["status"], "tool_call_required", "{step}");
    assert_eq!(scratch_dirs(&server).len(), 1, "the run's bridge directory");
    // The only run slot is the suspended run's; another session's call waits for it.
    let (status, body) = exec(
        &server,
        KEY_B,
        json!({"lang": "bash", "code": "echo other"}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["stdout"], "other\n");
    let (status, _) = ptc(
        &server,
        KEY_A,
        &json!({"continuation_token": step["continuation_token"], "tool_results": [{"call_id": step["tool_calls"][0]["id"], "result": 1}]}),
    )
    .await;
    assert_eq!(status, 404);
    wait_until("the bridge directory to go", || {
        scratch_dirs(&server).is_empty()
    })
    .await;
    assert_eq!(processes_with(&mark), 0);
}

#[tokio::test]
async fn fifty_suspended_programs_at_once_each_get_their_own_results() {
    let server = TestServer::start(&[
        ("KERNEL_POOL_SIZE", "0"),
        ("MAX_CONCURRENT_RUNS", "50"),
        ("MAX_CONCURRENT_RUNS_PER_TENANT", "50"),
    ])
    .await;
    let body = json!({
        "language": "bash",
        "code": "a=$(t '{\"n\": 1}'); b=$(t \"{\\\"prev\\\": $a}\"); echo \"$a $b\"",
        "tools": [tool("t", &[])],
        "timeout": 120000,
    });
    let starts = futures::future::join_all((0..50).map(|_| ptc(&server, KEY_A, &body))).await;
    let mut sessions = std::collections::HashSet::new();
    for (status, step) in &starts {
        assert_eq!(*status, 200, "{step}");
        assert_eq!(step["status"], "tool_call_required", "{step}");
        sessions.insert(step["session_id"].as_str().unwrap().to_owned());
    }
    assert_eq!(
        sessions.len(),
        50,
        "fifty runs suspended at once, each in its session"
    );
    let server = &server;
    let round = |steps: Vec<(StatusCode, Value)>, nth: usize| {
        futures::future::join_all(steps.into_iter().enumerate().map(move |(i, (_, step))| {
            async move {
                let call = &step["tool_calls"][0];
                ptc(
                    server,
                    KEY_A,
                    &json!({"continuation_token": step["continuation_token"], "tool_results": [{"call_id": call["id"], "result": i * 10 + nth}]}),
                )
                .await
            }
        }))
    };
    let seconds = round(starts, 1).await;
    for (status, step) in &seconds {
        assert_eq!(*status, 200, "{step}");
        assert_eq!(step["status"], "tool_call_required", "{step}");
    }
    let ends = round(seconds, 2).await;
    for (i, (status, step)) in ends.iter().enumerate() {
        assert_eq!(*status, 200, "{step}");
        assert_eq!(step["status"], "completed", "{step}");
        assert_eq!(step["stdout"], format!("{} {}\n", i * 10 + 1, i * 10 + 2));
    }
    wait_until("the bridge directories to go", || {
        scratch_dirs(server).is_empty()
    })
    .await;
}

#[tokio::test]
async fn cancelling_the_request_that_suspended_a_run_stops_it_at_once() {
    let server = TestServer::start(&[("KERNEL_POOL_SIZE", "1")]).await;
    let mark = marker_seconds();
    for (lang, code, request_id) in [
        (
            "bash",
            format!("r=$(t '{{}}'); echo resumed > /mnt/data/resumed.txt; sleep {mark}"),
            "suspended-bash-request-0001",
        ),
        (
            "python",
            "await t()\nopen('/mnt/data/resumed.txt', 'w').write('resumed')".to_owned(),
            "suspended-python-request-01",
        ),
    ] {
        let (status, step) = ptc_at(
            &server,
            "/v1/exec/programmatic",
            KEY_A,
            &json!({"language": lang, "code": code, "tools": [tool("t", &[])], "timeout": 120000}),
            Some(request_id),
        )
        .await;
        assert_eq!(status, 200);
        assert_eq!(step["status"], "tool_call_required", "{step}");
        let sid = step["session_id"].as_str().unwrap().to_owned();
        // Not another tenant's to cancel.
        let (status, _) = ptc_at(
            &server,
            "/exec/programmatic/cancel",
            KEY_B,
            &json!({"request_id": request_id}),
            None,
        )
        .await;
        assert_eq!(status, 403);
        let (status, _) = ptc_at(
            &server,
            "/exec/programmatic/cancel",
            KEY_A,
            &json!({"request_id": request_id}),
            None,
        )
        .await;
        assert_eq!(status, 202);
        // The session is free long before the run's two-minute timeout.
        let (status, body) = tokio::time::timeout(
            Duration::from_secs(60),
            exec(
                &server,
                KEY_A,
                json!({"lang": "bash", "code": "ls /mnt/data", "session_id": sid}),
            ),
        )
        .await
        .expect("the cancelled run let its session go");
        assert_eq!(status, 200);
        assert_eq!(body["stdout"], "", "{lang}: the program went on: {body}");
        let (status, answer) = ptc(
            &server,
            KEY_A,
            &json!({"continuation_token": step["continuation_token"], "tool_results": [{"call_id": step["tool_calls"][0]["id"], "result": 1}]}),
        )
        .await;
        assert!(
            status == 404 || answer["error"] == "Programmatic execution request cancelled",
            "{lang}: {status} {answer}"
        );
    }
    assert_eq!(processes_with(&mark), 0);
}

/// A LibreChat token (EdDSA, the test fixture's key) for `user` of `tenant`.
fn librechat_token(user: &str, tenant: &str) -> String {
    use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
    let pem = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/jwt/ed25519.pem"
    ))
    .unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = json!({
        "iss": "librechat", "aud": "codeapi", "sub": user, "tenant_id": tenant,
        "jti": format!("jti-{user}-{now}"), "iat": now, "nbf": now, "exp": now + 240,
        "principal_source": "librechat_jwt", "auth_context_hash": "h-1",
    });
    let mut header = Header::new(Algorithm::EdDSA);
    header.kid = Some("librechat-ed-1".into());
    encode(&header, &claims, &EncodingKey::from_ed_pem(&pem).unwrap()).unwrap()
}

async fn ptc_as(
    server: &TestServer,
    token: &str,
    path: &str,
    body: &Value,
    request_id: Option<&str>,
) -> (StatusCode, Value) {
    let mut req = server
        .client
        .post(server.url(path))
        .bearer_auth(token)
        .json(body);
    if let Some(id) = request_id {
        req = req.header("X-LibreChat-Code-Request-ID", id);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status();
    (status, resp.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn continuations_and_cancels_belong_to_the_user_of_the_token_as_well_as_its_tenant() {
    let public = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/jwt/ed25519.pub.pem"
    ))
    .unwrap();
    let server = TestServer::start(&[
        ("KERNEL_POOL_SIZE", "0"),
        ("CODEAPI_JWT_PUBLIC_KEY", public.as_str()),
        ("CODEAPI_JWT_KID", "librechat-ed-1"),
    ])
    .await;
    let (alice, bob, mallory) = (
        librechat_token("alice", "acme"),
        librechat_token("bob", "acme"),
        librechat_token("alice", "other-corp"),
    );
    let request_id = "alice-request-000000001";
    let (status, step) = ptc_as(
        &server,
        &alice,
        "/v1/exec/programmatic",
        &json!({"lang": "bash", "code": "r=$(t '{}'); echo \"got $r\"", "tools": [tool("t", &[])], "timeout": 60000}),
        Some(request_id),
    )
    .await;
    assert_eq!(status, 200, "{step}");
    assert_eq!(step["status"], "tool_call_required", "{step}");
    let continuation = json!({"continuation_token": step["continuation_token"], "tool_results": [{"call_id": step["tool_calls"][0]["id"], "result": "yes"}]});
    // Another user of the same tenant, and the same user name in another tenant: 403.
    for other in [&bob, &mallory] {
        let (status, answer) =
            ptc_as(&server, other, "/v1/exec/programmatic", &continuation, None).await;
        assert_eq!(status, 403, "{answer}");
        assert_eq!(answer["error"], "Forbidden");
        let (status, _) = ptc_as(
            &server,
            other,
            "/v1/exec/programmatic/cancel",
            &json!({"request_id": request_id}),
            None,
        )
        .await;
        assert_eq!(status, 403);
    }
    // An API key of the server is a tenant of its own: 403 too.
    let (status, _) = ptc(&server, KEY_A, &continuation).await;
    assert_eq!(status, 403);
    let (status, done) = ptc_as(
        &server,
        &alice,
        "/v1/exec/programmatic",
        &continuation,
        None,
    )
    .await;
    assert_eq!(status, 200, "{done}");
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["stdout"], "got \"yes\"\n");
}
