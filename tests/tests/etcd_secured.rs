//! End to end against a secured etcd, as production clusters run it: TLS with client
//! certificates (`--client-cert-auth`), and etcd's own users and roles. Nodes join with
//! flannel's flags or its `FLANNELD_ETCD_*` variables; every way of being refused ends
//! twill within seconds with one error line naming the cause, not a retry loop.

use std::time::Duration;

use twill_e2e::{Cluster, Etcd, path_arg, wait_for};
use twill_lab::pki::Signer;

/// The exit status of a store error (docs/operations.md, "Exit status").
const STORE: i32 = 4;

const CONFIG: &str = r#"{"Network":"10.244.0.0/16","Backend":{"Type":"host-gw"}}"#;

/// A refusal must end twill well before a retry loop would have said anything twice
/// (its backoff starts at 1 s and doubles).
const REFUSED_WITHIN: Duration = Duration::from_secs(10);

#[test]
fn tls_with_client_certificates_joins_and_each_refusal_exits_naming_its_cause() {
    let mut c = Cluster::with_etcd(2, Etcd::Tls);
    c.put_config(CONFIG);
    let pki = c.pki.clone().expect("a TLS cluster has certificates");
    let client = c.client_cert.clone().expect("a client certificate");
    let https = c.etcd_args[1].clone();
    assert!(https.starts_with("https://"), "endpoint {https}");

    // Node 1 with the flags, node 2 with flannel's environment variables.
    c.start_twill(1);
    let flags = std::mem::replace(
        &mut c.etcd_args,
        vec!["--etcd-endpoints".into(), https.clone()],
    );
    c.twill_env = vec![
        ("FLANNELD_ETCD_CAFILE".into(), path_arg(&pki.ca.cert)),
        ("FLANNELD_ETCD_CERTFILE".into(), path_arg(&client.cert)),
        ("FLANNELD_ETCD_KEYFILE".into(), path_arg(&client.key)),
    ];
    c.start_twill(2);
    c.wire_pods();
    c.assert_full_mesh(Duration::from_secs(30));
    assert_eq!(c.leases().len(), 2, "both nodes hold a lease over TLS");
    assert_eq!(c.nodes[1].stop(), Some(0));
    c.twill_env.clear();
    std::fs::write(&c.nodes[1].log, "").expect("truncate log");

    let rogue_client = pki
        .issue("rogue-client", "twill", &["127.0.0.1"], Signer::Rogue)
        .expect("a client certificate from another CA");
    let (ca, cert, key) = (
        path_arg(&pki.ca.cert),
        path_arg(&client.cert),
        path_arg(&client.key),
    );
    let rogue_ca = path_arg(&pki.rogue.cert);
    let (rogue_cert, rogue_key) = (path_arg(&rogue_client.cert), path_arg(&rogue_client.key));
    let http = https.replace("https://", "http://");
    let cases: Vec<(&str, Vec<&str>, &str)> = vec![
        (
            "a CA that did not sign etcd's certificate",
            vec![
                "--etcd-cafile",
                &rogue_ca,
                "--etcd-certfile",
                &cert,
                "--etcd-keyfile",
                &key,
            ],
            "etcd's server certificate is not accepted (UnknownIssuer)",
        ),
        (
            "no client certificate",
            vec!["--etcd-cafile", &ca],
            "etcd refused the handshake with alert",
        ),
        (
            "a client certificate from a CA etcd does not trust",
            vec![
                "--etcd-cafile",
                &ca,
                "--etcd-certfile",
                &rogue_cert,
                "--etcd-keyfile",
                &rogue_key,
            ],
            "it wants a client certificate (--etcd-certfile/--etcd-keyfile) signed by a CA it trusts",
        ),
        (
            "TLS files with an http:// endpoint",
            vec!["--etcd-cafile", &ca, "--etcd-endpoints", &http],
            "is http://, but TLS files",
        ),
        (
            "a key file that does not exist",
            vec![
                "--etcd-cafile",
                &ca,
                "--etcd-certfile",
                &cert,
                "--etcd-keyfile",
                "/nonexistent/twill.key",
            ],
            "--etcd-keyfile /nonexistent/twill.key: cannot read it",
        ),
        (
            "a certificate file given as the CA",
            vec!["--etcd-cafile", &key],
            "no PEM \"CERTIFICATE\" block",
        ),
    ];
    for (what, extra, want) in cases {
        let endpoint_given = extra.contains(&"--etcd-endpoints");
        c.etcd_args = if endpoint_given {
            Vec::new()
        } else {
            vec!["--etcd-endpoints".into(), https.clone()]
        };
        let mut args = vec!["--iface", "eth0"];
        args.extend(extra);
        let (line, ran) = c.expect_failure(2, &args, STORE, want);
        eprintln!("{what}: exited after {ran:.1?}: {line}");
        assert!(
            ran < REFUSED_WITHIN,
            "{what}: twill ran {ran:?} before giving up (a retry loop?)"
        );
    }
    // The refused attempts took no lease and disturbed nobody.
    c.etcd_args = flags;
    assert_eq!(c.leases().len(), 2);
    assert!(
        c.pod_ping(1, 2) || c.pod_ping(1, 2),
        "node 1 still reaches node 2's pod"
    );
    assert_eq!(c.nodes[0].stop(), Some(0));
}

#[test]
fn etcd_users_and_roles_a_user_with_read_write_on_the_prefix_joins_others_exit() {
    let mut c = Cluster::with_etcd(2, Etcd::Plain);
    c.put_config(CONFIG);
    let prefix = format!("{}/", c.prefix);
    {
        let etcd = c.etcd_member(0);
        etcd.enable_auth("root-secret").expect("enable auth");
        etcd.add_user("twill", "twill-secret", "readwrite", &prefix)
            .expect("user twill");
        etcd.add_user("reader", "reader-secret", "read", &prefix)
            .expect("user reader");
        etcd.add_user("stranger", "stranger-secret", "readwrite", "/elsewhere/")
            .expect("user stranger");
        // Tokens that expire within the test: the node must authenticate again.
        etcd.restart_with_auth_token_ttl(2).expect("restart etcd");
    }

    c.start_twill_with(
        1,
        &[
            "--iface",
            "eth0",
            "--etcd-username",
            "twill",
            "--etcd-password",
            "twill-secret",
        ],
    );
    c.twill_env = vec![
        ("FLANNELD_ETCD_USERNAME".into(), "twill".into()),
        ("FLANNELD_ETCD_PASSWORD".into(), "twill-secret".into()),
    ];
    c.start_twill(2);
    c.wire_pods();
    c.assert_full_mesh(Duration::from_secs(30));
    c.twill_env.clear();

    // Past the token TTL, and after an etcd restart (which forgets every token), the
    // watch reconnects: a lease written now reaches node 1.
    std::thread::sleep(Duration::from_secs(5));
    c.etcd_member(0).stop();
    c.etcd_member(0).start().expect("etcd back");
    let key = format!("{}/subnets/10.244.250.0-24", c.prefix);
    c.etcdctl(&[
        "put",
        &key,
        r#"{"PublicIP":"192.168.77.99","BackendType":"host-gw"}"#,
    ]);
    wait_for(
        "node 1 to see a lease written after its token expired",
        Duration::from_secs(30),
        || {
            let (_, body) = c.nodes[0].api_get("/v1/leases");
            body.contains("10.244.250.0/24").then_some(())
        },
    );
    c.etcdctl(&["del", &key]);
    assert_eq!(c.nodes[1].stop(), Some(0));
    std::fs::write(&c.nodes[1].log, "").expect("truncate log");

    let eth0 = ["--iface", "eth0"];
    let with_user = |user: &'static str, password: &'static str| {
        let mut args = eth0.to_vec();
        args.extend(["--etcd-username", user, "--etcd-password", password]);
        args
    };
    let cases: Vec<(&str, Vec<&str>, &str)> = vec![
        (
            "a wrong password",
            with_user("twill", "wrong"),
            "authentication failed, invalid user ID or password",
        ),
        (
            "a user that does not exist",
            with_user("nobody", "x"),
            "authentication failed, invalid user ID or password",
        ),
        ("no user at all", eth0.to_vec(), "user name is empty"),
        (
            "a role on another prefix",
            with_user("stranger", "stranger-secret"),
            "the etcd role of --etcd-username must grant read-write on the prefix",
        ),
        (
            "a read-only role (it reads the config, then cannot write its lease)",
            with_user("reader", "reader-secret"),
            "permission denied",
        ),
    ];
    for (what, args, want) in cases {
        let (line, ran) = c.expect_failure(2, &args, STORE, want);
        eprintln!("{what}: exited after {ran:.1?}: {line}");
        assert!(
            ran < REFUSED_WITHIN,
            "{what}: twill ran {ran:?} before giving up (a retry loop?)"
        );
    }
    assert_eq!(c.leases().len(), 2, "no refused attempt changed a lease");
    assert_eq!(c.nodes[0].stop(), Some(0));
}
