//! `bpci deploy k8s --validators N --out DIR`: Kubernetes manifests for N validators, with keys
//! made here. Per validator: a Secret (its key and the operator token), a ConfigMap (its
//! config) and a StatefulSet of one replica with its own PersistentVolumeClaim; for the set: a
//! Namespace, a headless Service (`publishNotReadyAddresses`, so peers resolve one another
//! before they are ready), and a PodDisruptionBudget allowing at most f validators down at
//! once. Pods refuse to share a node (required anti-affinity), probe `/livez` (startup and
//! liveness) and `/readyz` (readiness), and run as a non-root user.
//!
//! Not a Deployment with replicas: replicas of one validator would share one key (a
//! double-sign machine) and keep no durable state.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use serde_json::{json, Value};

use bpci::crypto::Keypair;

/// `bpci deploy`.
#[derive(clap::Subcommand, Debug)]
pub enum DeployCommand {
    /// Kubernetes manifests for a validator set (keys made here, in Secrets).
    K8s(K8sArgs),
}

/// `bpci deploy k8s`.
#[derive(clap::Args, Debug)]
pub struct K8sArgs {
    /// Validators (4 to 100).
    #[arg(long, default_value_t = 4)]
    validators: usize,
    /// Where the manifests go (created; must not exist or be empty).
    #[arg(long)]
    out: PathBuf,
    /// The namespace.
    #[arg(long, default_value = "bpci")]
    namespace: String,
    /// The container image (built from deploy/Dockerfile).
    #[arg(long, default_value = "bpci/consensus:latest")]
    image: String,
    /// The chain id bound into every signature.
    #[arg(long, default_value = "bpci-main")]
    chain_id: String,
    /// Each validator's stake.
    #[arg(long, default_value_t = 1_000_000)]
    stake: u64,
    /// Each validator's volume size.
    #[arg(long, default_value = "50Gi")]
    storage: String,
}

const APP: &str = "bpci-validator";
const SERVICE: &str = "bpci";
const UID: u64 = 10001;
const HTTP_PORT: u16 = 8080;
const P2P_PORT: u16 = 8081;
const CLIENT_PORT: u16 = 8082;

/// A Kubernetes name: lower-case alphanumerics and dashes, starting and ending alphanumeric.
fn check_name(what: &str, s: &str) -> anyhow::Result<()> {
    let ok = !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-');
    if !ok {
        bail!("--{what} {s:?} is not a Kubernetes name (lower-case letters, digits and dashes, at most 63)");
    }
    Ok(())
}

/// Runs `bpci deploy ...`.
pub fn run(cmd: DeployCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        DeployCommand::K8s(args) => k8s(&args),
    }
}

fn k8s(a: &K8sArgs) -> anyhow::Result<ExitCode> {
    if !(4..=100).contains(&a.validators) {
        bail!(
            "--validators must be between 4 and 100, got {}",
            a.validators
        );
    }
    check_name("namespace", &a.namespace)?;
    if a.stake == 0 {
        bail!("--stake must be positive");
    }
    if a.chain_id.is_empty() || a.chain_id.contains(['"', '\\', '\n']) {
        bail!("--chain-id must be non-empty, without quotes, backslashes or newlines");
    }
    if a.out.exists()
        && std::fs::read_dir(&a.out)
            .with_context(|| format!("reading {}", a.out.display()))?
            .next()
            .is_some()
    {
        bail!(
            "{} is not empty: refusing to write keys over it",
            a.out.display()
        );
    }
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    let n = a.validators;
    let f = (n - 1) / 3;
    let keys: Vec<Keypair> = (0..n)
        .map(|_| Keypair::generate(&mut rand::rngs::OsRng))
        .collect();
    let token = bpci::node::keys::new_token();
    let dns = |i: usize| {
        format!(
            "validator-{i}-0.{SERVICE}.{}.svc.cluster.local",
            a.namespace
        )
    };
    let validators: String = keys
        .iter()
        .enumerate()
        .map(|(i, k)| {
            format!(
                "  - validator_id: \"validator-{i:03}\"\n    stake: {}\n    endpoint: \"{}:{P2P_PORT}\"\n    public_key: \"{}\"\n    is_active: true\n",
                a.stake,
                dns(i),
                k.public()
            )
        })
        .collect();
    let mut files = vec![(
        "common.yaml".to_string(),
        docs(&[
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": a.namespace}}),
            json!({
                "apiVersion": "v1", "kind": "Service",
                "metadata": {"name": SERVICE, "namespace": a.namespace, "labels": {"app": APP}},
                "spec": {
                    "clusterIP": "None",
                    "publishNotReadyAddresses": true,
                    "selector": {"app": APP},
                    "ports": [
                        {"name": "http", "port": HTTP_PORT, "protocol": "TCP"},
                        {"name": "p2p", "port": P2P_PORT, "protocol": "UDP"},
                        {"name": "client", "port": CLIENT_PORT, "protocol": "UDP"},
                    ],
                },
            }),
            json!({
                "apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
                "metadata": {"name": "bpci-validators", "namespace": a.namespace},
                "spec": {"maxUnavailable": f, "selector": {"matchLabels": {"app": APP}}},
            }),
        ])?,
        false,
    )];
    for (i, key) in keys.iter().enumerate() {
        let name = format!("validator-{i}");
        let config = format!(
            "triple_consensus:\n  coordinator:\n    max_active_rounds: 10\n    round_timeout_seconds: 30\n    validator_timeout_seconds: 10\n  ibft:\n    byzantine_tolerance_ratio: 0.33\n    required_vote_threshold: 0.67\n    phase_timeout_seconds: 1\n    signature_verification: true\n  hotstuff:\n    pipeline_depth: 3\n    optimistic_execution: true\n    view_timeout_seconds: 8\n    leader_rotation_enabled: true\n  auction:\n    bid_evaluation_timeout_seconds: 5\n    mev_protection_enabled: false\n    priority_weight: 0.3\n    economic_weight: 0.7\nvalidators:\n{validators}consensus_thresholds:\n  minimum_validators: {n}\n  byzantine_fault_tolerance: {f}\n  stake_threshold: {stake}\nlogging:\n  level: \"info\"\n  format: \"json\"\nnode:\n  validator_id: \"validator-{i:03}\"\n  key_file: \"/etc/bpci/secret/validator.key\"\n  operator_token_file: \"/etc/bpci/secret/operator-token\"\n  data_dir: \"/var/lib/bpci/data\"\n  chain_id: \"{chain}\"\n  listen: \"0.0.0.0:{P2P_PORT}\"\n  client_listen: \"0.0.0.0:{CLIENT_PORT}\"\n  http_listen: \"0.0.0.0:{HTTP_PORT}\"\n",
            stake = a.stake,
            chain = a.chain_id,
        );
        // The node's own check refuses a config it cannot parse: check here first.
        bpci::config::Config::from_yaml(&config)
            .with_context(|| format!("the config made for {name}"))?;
        let secret = json!({
            "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": {"name": format!("{name}-secret"), "namespace": a.namespace, "labels": {"app": APP}},
            "stringData": {
                "validator.key": format!("{}{}\n", bpci::node::keys::SECRET_PREFIX, hex::encode(key.seed())),
                "operator-token": format!("{token}\n"),
            },
        });
        files.push((format!("{name}-secret.yaml"), docs(&[secret])?, true));
        let probe = |path: &str, period: u64, failures: u64| json!({"httpGet": {"path": path, "port": "http"}, "periodSeconds": period, "failureThreshold": failures, "timeoutSeconds": 3});
        let set = json!({
            "apiVersion": "apps/v1", "kind": "StatefulSet",
            "metadata": {"name": name, "namespace": a.namespace, "labels": {"app": APP, "validator": name}},
            "spec": {
                "serviceName": SERVICE,
                "replicas": 1,
                "podManagementPolicy": "Parallel",
                "selector": {"matchLabels": {"app": APP, "validator": name}},
                "template": {
                    "metadata": {"labels": {"app": APP, "validator": name}},
                    "spec": {
                        "securityContext": {"runAsNonRoot": true, "runAsUser": UID, "runAsGroup": UID, "fsGroup": UID},
                        "terminationGracePeriodSeconds": 30,
                        "affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
                            {"labelSelector": {"matchLabels": {"app": APP}}, "topologyKey": "kubernetes.io/hostname"}
                        ]}},
                        // Secret volumes are group-readable under fsGroup; the node wants its
                        // key file private (0600): copy it into memory with that mode first.
                        "initContainers": [{
                            "name": "private-key",
                            "image": a.image,
                            "command": ["sh", "-c", "umask 077 && cp /etc/bpci/secret-src/validator.key /etc/bpci/secret-src/operator-token /etc/bpci/secret/ && chmod 600 /etc/bpci/secret/*"],
                            "securityContext": {"allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true, "capabilities": {"drop": ["ALL"]}},
                            "volumeMounts": [
                                {"name": "secret-src", "mountPath": "/etc/bpci/secret-src", "readOnly": true},
                                {"name": "secret", "mountPath": "/etc/bpci/secret"},
                            ],
                        }],
                        "containers": [{
                            "name": "validator",
                            "image": a.image,
                            "args": ["--config", "/etc/bpci/consensus-config.yaml"],
                            "ports": [
                                {"name": "http", "containerPort": HTTP_PORT, "protocol": "TCP"},
                                {"name": "p2p", "containerPort": P2P_PORT, "protocol": "UDP"},
                                {"name": "client", "containerPort": CLIENT_PORT, "protocol": "UDP"},
                            ],
                            "startupProbe": probe("/livez", 5, 60),
                            "livenessProbe": probe("/livez", 10, 3),
                            "readinessProbe": probe("/readyz", 5, 3),
                            "resources": {"requests": {"cpu": "2", "memory": "2Gi"}, "limits": {"memory": "8Gi"}},
                            "securityContext": {"allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true, "capabilities": {"drop": ["ALL"]}},
                            "volumeMounts": [
                                {"name": "config", "mountPath": "/etc/bpci/consensus-config.yaml", "subPath": "consensus-config.yaml", "readOnly": true},
                                {"name": "secret", "mountPath": "/etc/bpci/secret", "readOnly": true},
                                {"name": "data", "mountPath": "/var/lib/bpci"},
                            ],
                        }],
                        "volumes": [
                            {"name": "config", "configMap": {"name": format!("{name}-config")}},
                            {"name": "secret-src", "secret": {"secretName": format!("{name}-secret"), "defaultMode": 0o400}},
                            {"name": "secret", "emptyDir": {"medium": "Memory", "sizeLimit": "1Mi"}},
                        ],
                    },
                },
                "volumeClaimTemplates": [{
                    "metadata": {"name": "data"},
                    "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": a.storage}}},
                }],
            },
        });
        let config_map = json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": format!("{name}-config"), "namespace": a.namespace, "labels": {"app": APP}},
            "data": {"consensus-config.yaml": config},
        });
        files.push((format!("{name}.yaml"), docs(&[config_map, set])?, false));
    }
    let resources: Vec<String> = files.iter().map(|(f, _, _)| f.clone()).collect();
    files.push((
        "kustomization.yaml".into(),
        docs(&[json!({
            "apiVersion": "kustomize.config.k8s.io/v1beta1",
            "kind": "Kustomization",
            "resources": resources,
        })])?,
        false,
    ));
    for (file, text, secret) in &files {
        write_file(&a.out.join(file), text, *secret)?;
    }
    eprintln!(
        "wrote {} validators' manifests to {} (Secrets, mode 0600, hold their keys and the operator token); apply with: kubectl apply -k {}",
        n,
        a.out.display(),
        a.out.display()
    );
    Ok(ExitCode::SUCCESS)
}

fn docs(items: &[Value]) -> anyhow::Result<String> {
    let mut out = String::new();
    for (i, v) in items.iter().enumerate() {
        if i > 0 {
            out.push_str("---\n");
        }
        out.push_str(&serde_saphyr::to_string(v).context("writing YAML")?);
    }
    Ok(out)
}

fn write_file(path: &Path, text: &str, secret: bool) -> anyhow::Result<()> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    if secret {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(text.as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}
