//! `STORE=shared` against real Redis and a real SeaweedFS S3 server on loopback: several
//! server processes with their own DATA_DIR (their own workspace caches) share one Redis and
//! one bucket. Files uploaded through one node are run on by another and downloaded from a
//! third; races between nodes lose no file; an outage of Redis or the bucket is a 503 with
//! a sentence, and nothing acknowledged is lost when it comes back.

mod common;

use common::shared::{SharedParts, prefix_for};
use common::{KEY_A, KEY_B, TestServer, exec};
use reqwest::StatusCode;
use serde_json::{Value, json};

/// A node of a cluster whose key prefix is `cluster`'s (nodes of one cluster share data).
async fn node(cluster: &str) -> TestServer {
    let parts = SharedParts::get();
    let env: Vec<(String, String)> = parts.env(cluster);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    TestServer::start(&env).await
}

fn cluster_name(test: &str) -> String {
    prefix_for(std::path::Path::new(test))
}

async fn download(server: &TestServer, sid: &str, fid: &str) -> (StatusCode, Vec<u8>) {
    let r = server.fetch(&format!("/download/{sid}/{fid}"), KEY_A).await;
    let status = r.status();
    (status, r.bytes().await.unwrap().to_vec())
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

#[tokio::test]
async fn upload_on_one_node_run_on_another_download_from_a_third() {
    let cluster = cluster_name("three-nodes");
    let (n1, n2, n3) = tokio::join!(node(&cluster), node(&cluster), node(&cluster));
    // Not text: every byte value, so nothing is re-encoded on the way.
    let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let (status, up) = n1
        .upload("/upload", KEY_A, &[("input.bin", &data)], &[])
        .await;
    assert_eq!(status, StatusCode::OK, "{up}");
    let sid = up["session_id"].as_str().unwrap().to_owned();
    let input_id = up["files"][0]["id"].as_str().unwrap().to_owned();

    // Node 2 has never seen the session: it hydrates it from the bucket for the run.
    let code = "data = open('input.bin', 'rb').read()\n\
                open('output.bin', 'wb').write(data[::-1])\n\
                print(len(data))";
    let (status, ran) = exec(
        &n2,
        KEY_A,
        json!({"lang": "py", "code": code, "session_id": sid,
               "files": [{"id": input_id, "session_id": sid, "name": "input.bin"}]}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{ran}");
    assert_eq!(ran["stdout"], "300000\n", "{ran}");
    assert_eq!(ran["session_id"], sid);
    let output_id = file_id(&ran["files"], "output.bin");

    // Node 3 holds nothing of it either: the bytes come from the bucket.
    let (status, bytes) = download(&n3, &sid, &output_id).await;
    assert_eq!(status, StatusCode::OK);
    let mut reversed = data.clone();
    reversed.reverse();
    assert!(
        bytes == reversed,
        "node 3 served other bytes than node 2 wrote"
    );
    let (status, bytes) = download(&n3, &sid, &input_id).await;
    assert_eq!(status, StatusCode::OK);
    assert!(bytes == data);

    // Every node lists the same files, and another tenant sees none of them.
    for n in [&n1, &n2, &n3] {
        let list = n.get_json(&format!("/files/{sid}"), KEY_A).await;
        let mut names = common::names(&list);
        names.sort();
        assert_eq!(names, ["input.bin", "output.bin"], "{list}");
        let other = n.fetch(&format!("/files/{sid}"), KEY_B).await;
        let other: Value = other.json().await.unwrap();
        assert_eq!(other, json!([]), "another tenant sees the session's files");
    }

    // A change made on node 1 reaches a run on node 2 (its cache is stale, then synced),
    // and a file deleted through node 3 is gone from node 2's workspace.
    let (status, _) = n1
        .upload(
            "/upload",
            KEY_A,
            &[("input.bin", b"replaced")],
            &[("session_id", &sid)],
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let r = n3
        .delete(&format!("/files/{sid}/{output_id}"), KEY_A)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    let (status, ran) = exec(
        &n2,
        KEY_A,
        json!({"lang": "py", "session_id": sid,
               "code": "import os; print(open('input.bin').read(), sorted(os.listdir('.')))"}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{ran}");
    assert_eq!(ran["stdout"], "replaced ['input.bin']\n", "{ran}");
}

#[tokio::test]
async fn uploads_racing_on_two_nodes_lose_no_file() {
    let cluster = cluster_name("races");
    let (n1, n2) = tokio::join!(node(&cluster), node(&cluster));
    let (status, up) = n1
        .upload("/upload", KEY_A, &[("seed.txt", b"seed")], &[])
        .await;
    assert_eq!(status, StatusCode::OK);
    let sid = up["session_id"].as_str().unwrap().to_owned();

    // 2 x 8 uploads of different names at once, half through each node; then 2 x 4 of one
    // name, where exactly one version must win whole.
    let mut uploads: Vec<(String, String)> = (0..16)
        .map(|i| (format!("part-{i}.txt"), format!("content of {i}")))
        .collect();
    uploads.extend((0..8).map(|i| {
        (
            "same.txt".to_owned(),
            format!("version {i} {}", "x".repeat(1000 * i)),
        )
    }));
    let tasks = uploads.iter().enumerate().map(|(i, (name, body))| {
        let n = if i % 2 == 0 { &n1 } else { &n2 };
        let sid = sid.clone();
        async move {
            n.upload(
                "/upload",
                KEY_A,
                &[(name, body.as_bytes())],
                &[("session_id", &sid)],
            )
            .await
        }
    });
    for (status, body) in futures::future::join_all(tasks).await {
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    for n in [&n1, &n2] {
        let list = n.get_json(&format!("/files/{sid}"), KEY_A).await;
        assert_eq!(list.as_array().unwrap().len(), 18, "{list}");
        for i in 0..16 {
            let id = file_id(&list, &format!("part-{i}.txt"));
            let (status, bytes) = download(n, &sid, &id).await;
            assert_eq!(status, StatusCode::OK);
            assert_eq!(bytes, format!("content of {i}").as_bytes());
        }
        let id = file_id(&list, "same.txt");
        let (_, bytes) = download(n, &sid, &id).await;
        let text = String::from_utf8(bytes).unwrap();
        let i: usize = text.split(' ').nth(1).unwrap().parse().unwrap();
        assert_eq!(text, format!("version {i} {}", "x".repeat(1000 * i)));
    }
    // A run on either node sees exactly those files.
    let (_, ran) = exec(
        &n2,
        KEY_A,
        json!({"lang": "bash", "session_id": sid, "code": "ls | wc -l; cat same.txt | head -c 9"}),
    )
    .await;
    assert!(
        ran["stdout"].as_str().unwrap().starts_with("18\nversion "),
        "{ran}"
    );
}

#[tokio::test]
async fn the_quota_holds_across_nodes() {
    let cluster = cluster_name("quota");
    let parts = SharedParts::get();
    let mut env = parts.env(&cluster);
    env.push(("SESSION_DISK_QUOTA_MB".into(), "1".into()));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let (n1, n2) = tokio::join!(TestServer::start(&env), TestServer::start(&env));
    let half = vec![b'a'; 600 * 1024];
    let (status, up) = n1.upload("/upload", KEY_A, &[("a.bin", &half)], &[]).await;
    assert_eq!(status, StatusCode::OK);
    let sid = up["session_id"].as_str().unwrap().to_owned();
    let (status, body) = n2
        .upload(
            "/upload",
            KEY_A,
            &[("b.bin", &half)],
            &[("session_id", &sid)],
        )
        .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    assert_eq!(body["error"], "quota_exceeded");
    let list = n1.get_json(&format!("/files/{sid}"), KEY_A).await;
    assert_eq!(common::names(&list), ["a.bin"]);
}

#[tokio::test]
async fn sessions_and_owner_labels_are_shared() {
    let cluster = cluster_name("owners");
    let (n1, n2) = tokio::join!(node(&cluster), node(&cluster));
    let (status, first) = exec(
        &n1,
        KEY_A,
        json!({"lang": "bash", "code": "echo one > note.txt", "entity_id": "agent_1", "user_id": "u1"}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{first}");
    // Same labels on the other node: the same session, its file there.
    let (_, second) = exec(
        &n2,
        KEY_A,
        json!({"lang": "bash", "code": "cat note.txt", "entity_id": "agent_1", "user_id": "u1"}),
    )
    .await;
    assert_eq!(second["session_id"], first["session_id"], "{second}");
    assert_eq!(second["stdout"], "one\n");
    // Deleted through node 2: gone on node 1 too.
    let sid = first["session_id"].as_str().unwrap();
    let r = n2
        .delete(&format!("/sessions/{sid}"), KEY_A)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    let list = n1.fetch(&format!("/files/{sid}"), KEY_A).await;
    let list: Value = list.json().await.unwrap();
    assert_eq!(list, json!([]));
    let health = n1.health().await;
    assert!(health.is_object());
}

#[tokio::test]
async fn an_outage_is_a_503_with_a_sentence_and_nothing_acknowledged_is_lost() {
    // Parts of its own: the other tests go on meanwhile.
    let parts = SharedParts::start();
    let cluster = cluster_name("outage");
    let env = parts.env(&cluster);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let n1 = TestServer::start(&env).await;
    let (status, up) = n1
        .upload("/upload", KEY_A, &[("kept.txt", b"acknowledged")], &[])
        .await;
    assert_eq!(status, StatusCode::OK);
    let sid = up["session_id"].as_str().unwrap().to_owned();
    let fid = up["files"][0]["id"].as_str().unwrap().to_owned();

    // Redis down: a clear 503, no hang.
    parts.stop_redis();
    let r = n1.fetch(&format!("/files/{sid}"), KEY_A).await;
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(r.headers().contains_key("retry-after"));
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"], "storage_unavailable");
    assert!(body["detail"].as_str().unwrap().contains("Redis"), "{body}");
    parts.start_redis();
    let (status, bytes) = download(&n1, &sid, &fid).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "Redis came back but the server did not recover"
    );
    assert_eq!(bytes, b"acknowledged");

    // The bucket down: an upload is refused with a sentence, and leaves nothing behind.
    parts.stop_weed();
    let (status, body) = n1
        .upload(
            "/upload",
            KEY_A,
            &[("lost.txt", b"x")],
            &[("session_id", &sid)],
        )
        .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(body["detail"].as_str().unwrap().contains("S3"), "{body}");
    parts.start_weed();
    let list = n1.get_json(&format!("/files/{sid}"), KEY_A).await;
    assert_eq!(common::names(&list), ["kept.txt"], "{list}");
    // A node that never held the session reads the acknowledged file from the bucket.
    // (weed answers S3 before its volume server has rejoined: a few 503s may come first.)
    let n2 = TestServer::start(&env).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let (status, bytes) = loop {
        let (status, bytes) = download(&n2, &sid, &fid).await;
        if status != StatusCode::SERVICE_UNAVAILABLE || std::time::Instant::now() > deadline {
            break (status, bytes);
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    assert_eq!(
        status,
        StatusCode::OK,
        "the bucket came back but downloads still fail"
    );
    assert_eq!(bytes, b"acknowledged");
    let (status, _) = n1
        .upload(
            "/upload",
            KEY_A,
            &[("later.txt", b"y")],
            &[("session_id", &sid)],
        )
        .await;
    assert_eq!(
        status,
        StatusCode::OK,
        "the bucket came back but uploads still fail"
    );
}

#[tokio::test]
async fn python_state_that_moved_nodes_is_announced_lost_on_both() {
    let cluster = cluster_name("kernels");
    let (n1, n2) = tokio::join!(node(&cluster), node(&cluster));
    let py = |code: &str, sid: Option<&str>| match sid {
        Some(sid) => json!({"lang": "py", "code": code, "session_id": sid}),
        None => json!({"lang": "py", "code": code}),
    };
    let (status, first) = exec(&n1, KEY_A, py("x = 41\nprint('set')", None)).await;
    assert_eq!(status, StatusCode::OK, "{first}");
    let sid = first["session_id"].as_str().unwrap().to_owned();
    let (_, again) = exec(&n1, KEY_A, py("print(x + 1)", Some(&sid))).await;
    assert_eq!(again["stdout"], "42\n", "state kept on one node: {again}");

    // Another node has no kernel for it: a new one, and the client is told.
    let (_, moved) = exec(&n2, KEY_A, py("x = 7\nprint(x)", Some(&sid))).await;
    assert_eq!(moved["stdout"], "7\n", "{moved}");
    let stderr = moved["stderr"].as_str().unwrap();
    assert!(
        stderr.contains("The previous Python state of this session was lost"),
        "{moved}"
    );
    // Back on the first node, its old kernel (x = 41) must not answer as if nothing happened.
    let (_, back) = exec(&n1, KEY_A, py("print('x' in dir())", Some(&sid))).await;
    assert_eq!(back["stdout"], "False\n", "a stale kernel answered: {back}");
    assert!(
        back["stderr"]
            .as_str()
            .unwrap()
            .contains("ran on another server node"),
        "{back}"
    );
}

#[tokio::test]
async fn a_killed_node_loses_its_kernel_never_a_file() {
    let cluster = cluster_name("kill");
    let (mut n1, n2) = tokio::join!(node(&cluster), node(&cluster));
    let code = "import os\n\
                state = 'alive'\n\
                for i in range(20):\n    open(f'out-{i}.txt', 'w').write(str(i) * 1000)\n\
                print('wrote')";
    let (status, first) = exec(&n1, KEY_A, json!({"lang": "py", "code": code})).await;
    assert_eq!(status, StatusCode::OK, "{first}");
    let sid = first["session_id"].as_str().unwrap().to_owned();
    assert_eq!(first["files"].as_array().unwrap().len(), 20, "{first}");

    // The node dies without a word; the next call goes to the other node.
    n1.kill();
    let (status, next) = exec(
        &n2,
        KEY_A,
        json!({"lang": "py", "session_id": sid, "code":
            "import os\nprint(sum(len(open(f'out-{i}.txt').read()) for i in range(20)), 'state' in dir())"}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{next}");
    assert_eq!(next["stdout"], "30000 False\n", "{next}");
    assert!(
        next["stderr"]
            .as_str()
            .unwrap()
            .contains("The previous Python state of this session was lost"),
        "{next}"
    );
    let list = n2.get_json(&format!("/files/{sid}"), KEY_A).await;
    assert_eq!(list.as_array().unwrap().len(), 20, "{list}");
}

#[tokio::test]
async fn the_run_rate_limit_counts_across_nodes() {
    let cluster = cluster_name("rate");
    let parts = SharedParts::get();
    let mut env = parts.env(&cluster);
    env.push(("RATE_LIMIT_EXEC_PER_MINUTE".into(), "3".into()));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let (n1, n2) = tokio::join!(TestServer::start(&env), TestServer::start(&env));
    let run = |user: &str| json!({"lang": "bash", "code": "echo ok", "user_id": user});
    for (i, n) in [&n1, &n2, &n1].into_iter().enumerate() {
        let (status, body) = exec(n, KEY_A, run("u1")).await;
        assert_eq!(status, StatusCode::OK, "run {i}: {body}");
    }
    // The minute's three are taken, on whichever node: the fourth is refused on both.
    for n in [&n2, &n1] {
        let (status, body) = exec(n, KEY_A, run("u1")).await;
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
        assert_eq!(body["error"], "rate_limited", "{body}");
        let retry = body["retry_after_seconds"].as_u64().unwrap();
        assert!((1..=20).contains(&retry), "{body}");
    }
    // Another user, and another tenant, have their own allowance.
    let (status, body) = exec(&n2, KEY_A, run("u2")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = exec(&n2, KEY_B, run("u1")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[tokio::test]
async fn a_tenants_run_share_counts_across_nodes_and_a_killed_node_gives_its_back() {
    let cluster = cluster_name("share");
    let parts = SharedParts::get();
    let mut env = parts.env(&cluster);
    for (k, v) in [
        ("MAX_CONCURRENT_RUNS_PER_TENANT", "1"),
        ("MAX_QUEUED_RUNS_PER_TENANT", "0"),
        ("NODE_LEASE_SECONDS", "2"),
    ] {
        env.push((k.into(), v.into()));
    }
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let (mut n1, n2) = tokio::join!(TestServer::start(&env), TestServer::start(&env));
    let quick = json!({"lang": "bash", "code": "echo ok"});

    // The tenant's one run at a time runs on node 1 (its client gives up when node 1 dies).
    // Node 2's runs of the same tenant go through until node 1's holds the share; from then
    // node 2 refuses them as node 1 itself does. (Node 1's run is refused in turn while one
    // of node 2's holds the share: then it is sent again.)
    let long_run = || {
        let request = n1
            .client
            .post(n1.url("/v1/exec"))
            .header("x-api-key", KEY_A)
            .json(&json!({"lang": "bash", "code": "sleep 120"}))
            .send();
        tokio::spawn(request)
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let mut long = long_run();
    let refused = loop {
        assert!(
            std::time::Instant::now() < deadline,
            "node 1's run never took the share"
        );
        if long.is_finished() {
            let answer = long.await.unwrap().unwrap();
            assert_eq!(answer.status(), StatusCode::TOO_MANY_REQUESTS);
            long = long_run();
        }
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        let (status, body) = exec(&n2, KEY_A, quick.clone()).await;
        match status {
            StatusCode::OK => assert_eq!(body["stdout"], "ok\n", "{body}"),
            StatusCode::TOO_MANY_REQUESTS => break body,
            other => panic!("{other}: {body}"),
        }
    };
    let (status, on_node_1) = exec(&n1, KEY_A, quick.clone()).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{on_node_1}");
    assert_eq!(refused, on_node_1, "node 2 refuses as one node does");
    assert!(
        refused["detail"]
            .as_str()
            .unwrap()
            .contains("MAX_QUEUED_RUNS_PER_TENANT"),
        "{refused}"
    );
    // Another tenant has its own share.
    let (status, body) = exec(&n2, KEY_B, quick.clone()).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // Node 1 dies holding the slot: once its place would have been renewed and was not,
    // the slot is the tenant's again.
    n1.kill();
    let _ = long.await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let (status, body) = exec(&n2, KEY_A, quick.clone()).await;
        match status {
            StatusCode::OK => break,
            StatusCode::TOO_MANY_REQUESTS => {}
            other => panic!("{other}: {body}"),
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the killed node's slot never came back: {body}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn queued_runs_of_one_tenant_on_two_nodes_take_turns_in_its_share() {
    let cluster = cluster_name("turns");
    let parts = SharedParts::get();
    let mut env = parts.env(&cluster);
    env.push(("MAX_CONCURRENT_RUNS_PER_TENANT".into(), "1".into()));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let (n1, n2) = tokio::join!(TestServer::start(&env), TestServer::start(&env));
    // Each run says when it started and ended (the nodes share this machine's clock).
    let code = "date +%s%N; sleep 0.5; date +%s%N";
    let runs = (0..6).map(|i| {
        let node = if i % 2 == 0 { &n1 } else { &n2 };
        exec(node, KEY_A, json!({"lang": "bash", "code": code}))
    });
    let mut spans: Vec<(u128, u128)> = futures::future::join_all(runs)
        .await
        .into_iter()
        .map(|(status, body)| {
            assert_eq!(status, StatusCode::OK, "{body}");
            let out = body["stdout"].as_str().unwrap();
            let mut times = out.lines().map(|l| l.parse::<u128>().unwrap());
            (times.next().unwrap(), times.next().unwrap())
        })
        .collect();
    spans.sort();
    for pair in spans.windows(2) {
        assert!(
            pair[1].0 >= pair[0].1,
            "two runs of a tenant with a share of one ran at once: {spans:?}"
        );
    }
}
