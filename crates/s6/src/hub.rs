//! Resolving a model argument (local dir or Hugging Face repo id) to a local directory.
//!
//! Downloads go to the standard Hugging Face cache (`$HF_HOME/hub`, default
//! `~/.cache/huggingface/hub`), shared with the Python tools, so a model fetched by either is
//! reused by the other. A fully cached model is used without touching the network.

use std::collections::BTreeSet;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use hf_hub::api::sync::{ApiBuilder, ApiRepo};
use hf_hub::{Cache, CacheRepo};

use crate::{Error, Result};

const CONFIG: &str = "config.json";
const TOKENIZER: &str = "tokenizer.json";
const SAFETENSORS: &str = "model.safetensors";
const SAFETENSORS_INDEX: &str = "model.safetensors.index.json";
const PYTORCH_BIN: &str = "pytorch_model.bin";

/// Resolves `--model`: an existing local directory is returned as is; a Hugging Face repo id
/// (`owner/name`) is looked up in the HF cache and, if not fully cached there, downloaded into
/// it (`config.json`, the weights, and `tokenizer.json` if the repo has one). Returns the
/// snapshot directory holding the files.
///
/// Honours `HF_HOME` (cache at `$HF_HOME/hub`), `HF_HUB_CACHE` (the cache directory itself),
/// `HF_ENDPOINT`, `HF_TOKEN` (else the token file of `huggingface-cli login`) and
/// `HF_HUB_OFFLINE=1` (use the cache only).
pub fn resolve_model(model: &str) -> Result<PathBuf> {
    let cache_dir = std::env::var_os("HF_HUB_CACHE").filter(|s| !s.is_empty()).map(PathBuf::from);
    resolve_model_with(model, cache_dir, env_offline())
}

/// [`resolve_model`] with the cache directory and offline mode given rather than read from the
/// environment. `cache_dir` is the hub cache itself (what `$HF_HOME/hub` is by default; `None`
/// means that default); `offline` forbids network access, so only a fully cached model resolves.
pub fn resolve_model_with(model: &str, cache_dir: Option<PathBuf>, offline: bool) -> Result<PathBuf> {
    resolve(model, cache_dir, offline, None)
}

/// The implementation, with an endpoint override so tests can point at an unreachable server.
fn resolve(model: &str, cache_dir: Option<PathBuf>, offline: bool, endpoint: Option<String>) -> Result<PathBuf> {
    let path = Path::new(model);
    if path.is_dir() {
        return Ok(path.to_path_buf());
    }
    if path.exists() {
        return Err(Error::input(format!(
            "model '{model}' is a file; --model takes a model directory or a Hugging Face repo id \
             (owner/name)"
        )));
    }
    if !is_repo_id(model) {
        return Err(Error::input(format!("model directory '{model}' does not exist")));
    }

    let cache = match &cache_dir {
        Some(dir) => Cache::new(dir.clone()),
        None => Cache::from_env(),
    };
    let cached = cache.model(model.to_string());
    if let Some(dir) = cached_snapshot(&cached) {
        return Ok(dir);
    }
    if offline {
        let what = if cached.get(CONFIG).is_some() { "an incomplete" } else { "no" };
        return Err(fetch_error(
            model,
            &format!("offline mode (HF_HUB_OFFLINE) and {what} cached copy in {}", cache.path().display()),
        ));
    }

    let mut builder = ApiBuilder::from_env().with_progress(std::io::stderr().is_terminal());
    if let Some(dir) = cache_dir {
        builder = builder.with_cache_dir(dir);
    }
    if let Some(endpoint) = endpoint {
        builder = builder.with_endpoint(endpoint);
    }
    if let Some(token) = std::env::var("HF_TOKEN").ok().filter(|t| !t.trim().is_empty()) {
        builder = builder.with_token(Some(token.trim().to_string()));
    }
    let api = builder.build().map_err(|e| fetch_error(model, &e.to_string()))?;
    download(model, &api.model(model.to_string()))
}

/// `HF_HUB_OFFLINE` set to a true value, as huggingface_hub reads it.
fn env_offline() -> bool {
    std::env::var("HF_HUB_OFFLINE")
        .is_ok_and(|v| matches!(v.trim().to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on"))
}

fn fetch_error(model: &str, reason: &str) -> Error {
    Error::Hub(format!(
        "model '{model}' is not a local directory and could not be fetched from the Hugging Face \
         Hub ({reason}); check the path or repo id, or download the model and pass its directory"
    ))
}

/// Whether `s` has the shape of a Hub repo id, `owner/name`: two parts of ASCII letters, digits,
/// `-`, `_` and `.`, neither starting or ending with `-` or `.` nor containing `--` or `..`.
/// This keeps paths such as `./model` or `/abs/model` from being sent to the Hub.
fn is_repo_id(s: &str) -> bool {
    let part_ok = |p: &str| {
        !p.is_empty()
            && p.len() <= 96
            && p.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            && !p.starts_with(['-', '.'])
            && !p.ends_with(['-', '.'])
            && !p.contains("--")
            && !p.contains("..")
    };
    match s.split_once('/') {
        Some((owner, name)) => part_ok(owner) && part_ok(name),
        None => false,
    }
}

/// Shard file names listed in a `model.safetensors.index.json`.
fn index_shards(index: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(index).map_err(|e| Error::io(index, e))?;
    let json: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| Error::format(index, format!("not valid JSON: {e}")))?;
    let map = json
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| Error::format(index, "no \"weight_map\" object"))?;
    let mut shards = BTreeSet::new();
    for (tensor, file) in map {
        let file = file
            .as_str()
            .ok_or_else(|| Error::format(index, format!("weight_map entry '{tensor}' is not a file name")))?;
        // The names become paths in the cache: refuse any that would escape the snapshot.
        let escapes = Path::new(file).is_absolute()
            || Path::new(file).components().any(|c| !matches!(c, std::path::Component::Normal(_)));
        if file.is_empty() || escapes {
            return Err(Error::format(index, format!("invalid shard file name '{file}'")));
        }
        shards.insert(file.to_string());
    }
    if shards.is_empty() {
        return Err(Error::format(index, "empty \"weight_map\""));
    }
    Ok(shards.into_iter().collect())
}

/// The snapshot directory of a cached repo if it holds `config.json` and a complete set of
/// weights, found without network access.
fn cached_snapshot(repo: &CacheRepo) -> Option<PathBuf> {
    let config = repo.get(CONFIG)?;
    let weights_cached = if repo.get(SAFETENSORS).is_some() {
        true
    } else if let Some(index) = repo.get(SAFETENSORS_INDEX) {
        index_shards(&index).is_ok_and(|shards| shards.iter().all(|s| repo.get(s).is_some()))
    } else {
        repo.get(PYTORCH_BIN).is_some()
    };
    weights_cached.then(|| config.parent().map(Path::to_path_buf)).flatten()
}

/// Downloads (or finds in the cache) the files a model needs; returns the snapshot directory.
fn download(model: &str, repo: &ApiRepo) -> Result<PathBuf> {
    let fetch = |name: &str| repo.get(name).map_err(|e| fetch_error(model, &format!("{name}: {e}")));
    // One listing request tells which weight format the repo has, instead of probing for 404s.
    let info = repo.info().map_err(|e| fetch_error(model, &e.to_string()))?;
    let files: BTreeSet<&str> = info.siblings.iter().map(|s| s.rfilename.as_str()).collect();
    if !files.contains(CONFIG) {
        return Err(Error::Hub(format!(
            "model '{model}' on the Hugging Face Hub has no {CONFIG}; is it a model repository?"
        )));
    }

    let mut names = vec![CONFIG.to_string()];
    if files.contains(SAFETENSORS) {
        names.push(SAFETENSORS.to_string());
    } else if files.contains(SAFETENSORS_INDEX) {
        let index = fetch(SAFETENSORS_INDEX)?;
        names.push(SAFETENSORS_INDEX.to_string());
        names.extend(index_shards(&index)?);
    } else if files.contains(PYTORCH_BIN) {
        names.push(PYTORCH_BIN.to_string());
    } else {
        return Err(Error::Hub(format!(
            "model '{model}' on the Hugging Face Hub has none of {SAFETENSORS}, \
             {SAFETENSORS_INDEX} or {PYTORCH_BIN}"
        )));
    }
    if files.contains(TOKENIZER) {
        names.push(TOKENIZER.to_string());
    }

    // Each file lands in the snapshot of the commit it was fetched at. Should the repo have
    // moved on since some files were cached, they would be split across snapshots; a second
    // pass fetches the missing ones into the latest snapshot.
    for _pass in 0..2 {
        let mut dir = None;
        for name in &names {
            let path = fetch(name)?;
            if name == CONFIG {
                dir = path.parent().map(Path::to_path_buf);
            }
        }
        if let Some(dir) = dir {
            if names.iter().all(|n| dir.join(n).exists()) {
                return Ok(dir);
            }
        }
    }
    Err(fetch_error(model, "the repository changed while downloading; try again"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh empty directory under the system temp dir, unique per test.
    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("s6-hub-test-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// Lays out a cached snapshot of `repo` as the HF cache does; returns the snapshot dir.
    fn fake_cache(cache: &Path, repo: &str, files: &[(&str, &str)]) -> PathBuf {
        let root = cache.join(format!("models--{}", repo.replace('/', "--")));
        std::fs::create_dir_all(root.join("refs")).unwrap();
        std::fs::write(root.join("refs/main"), "0123abcd").unwrap();
        let snap = root.join("snapshots/0123abcd");
        std::fs::create_dir_all(&snap).unwrap();
        for (name, contents) in files {
            std::fs::write(snap.join(name), contents).unwrap();
        }
        snap
    }

    #[test]
    fn local_dir_passes_through() {
        let dir = temp_dir("local");
        let s = dir.to_str().unwrap();
        assert_eq!(resolve_model_with(s, None, true).unwrap(), dir);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn missing_path_is_invalid_input() {
        for model in ["./nope", "/abs/missing", "nope", "a/b/c", "../x", ""] {
            let err = resolve_model_with(model, None, true).unwrap_err();
            assert!(matches!(err, Error::InvalidInput(_)), "{model}: {err:?}");
            let msg = err.to_string();
            assert_eq!(msg, format!("model directory '{model}' does not exist"));
        }
    }

    #[test]
    fn file_is_not_a_model_dir() {
        let dir = temp_dir("file");
        let file = dir.join("config.json");
        std::fs::write(&file, "{}").unwrap();
        let err = resolve_model_with(file.to_str().unwrap(), None, true).unwrap_err();
        assert!(matches!(err, Error::InvalidInput(_)), "{err:?}");
        assert!(err.to_string().contains("is a file"), "{err}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn repo_id_shape() {
        for ok in ["state-spaces/mamba-130m", "state-spaces/mamba-130m-hf", "a/b", "A_1/x.y"] {
            assert!(is_repo_id(ok), "{ok}");
        }
        for bad in ["./nope", "/abs/x", "x/", "/x", "a/b/c", "a", "a/.b", "a/b-", "a--b/c", "a/b..c"] {
            assert!(!is_repo_id(bad), "{bad}");
        }
    }

    #[test]
    fn offline_repo_id_without_cache_is_hub_error() {
        let cache = temp_dir("offline-empty");
        let err = resolve_model_with("state-spaces/mamba-130m", Some(cache.clone()), true).unwrap_err();
        assert!(matches!(err, Error::Hub(_)), "{err:?}");
        let msg = err.to_string();
        assert!(
            msg.contains("model 'state-spaces/mamba-130m' is not a local directory and could not be fetched from the Hugging Face Hub"),
            "{msg}"
        );
        assert!(msg.contains("offline") && msg.contains("no cached copy"), "{msg}");
        std::fs::remove_dir_all(cache).unwrap();
    }

    #[test]
    fn cached_repo_resolves_offline() {
        let cache = temp_dir("cached");
        let snap = fake_cache(&cache, "owner/single", &[("config.json", "{}"), ("model.safetensors", "")]);
        assert_eq!(resolve_model_with("owner/single", Some(cache.clone()), true).unwrap(), snap);

        let snap = fake_cache(&cache, "owner/bin", &[("config.json", "{}"), ("pytorch_model.bin", "")]);
        assert_eq!(resolve_model_with("owner/bin", Some(cache.clone()), true).unwrap(), snap);

        let index = r#"{"metadata": {}, "weight_map": {"a": "model-1.safetensors", "b": "model-2.safetensors", "c": "model-1.safetensors"}}"#;
        let files = [
            ("config.json", "{}"),
            ("model.safetensors.index.json", index),
            ("model-1.safetensors", ""),
            ("model-2.safetensors", ""),
        ];
        let snap = fake_cache(&cache, "owner/sharded", &files);
        assert_eq!(resolve_model_with("owner/sharded", Some(cache.clone()), true).unwrap(), snap);
        std::fs::remove_dir_all(cache).unwrap();
    }

    #[test]
    fn incomplete_cache_offline_is_hub_error() {
        let cache = temp_dir("incomplete");
        fake_cache(&cache, "owner/noweights", &[("config.json", "{}")]);
        let index = r#"{"weight_map": {"a": "model-1.safetensors", "b": "model-2.safetensors"}}"#;
        let files = [("config.json", "{}"), ("model.safetensors.index.json", index), ("model-1.safetensors", "")];
        fake_cache(&cache, "owner/missingshard", &files);
        for model in ["owner/noweights", "owner/missingshard"] {
            let err = resolve_model_with(model, Some(cache.clone()), true).unwrap_err();
            assert!(matches!(err, Error::Hub(_)), "{err:?}");
            assert!(err.to_string().contains("an incomplete cached copy"), "{err}");
        }
        std::fs::remove_dir_all(cache).unwrap();
    }

    #[test]
    fn unreachable_hub_fails_fast_with_hub_error() {
        let cache = temp_dir("unreachable");
        // Port 9 (discard) on localhost: refused at once, no internet needed.
        let start = std::time::Instant::now();
        let err = resolve("owner/name", Some(cache.clone()), false, Some("http://127.0.0.1:9".into())).unwrap_err();
        assert!(start.elapsed().as_secs() < 10, "took {:?}", start.elapsed());
        assert!(matches!(err, Error::Hub(_)), "{err:?}");
        let msg = err.to_string();
        assert!(msg.contains("model 'owner/name' is not a local directory"), "{msg}");
        std::fs::remove_dir_all(cache).unwrap();
    }

    #[test]
    fn index_shards_rejects_escaping_names() {
        let dir = temp_dir("index");
        let index = dir.join("model.safetensors.index.json");
        std::fs::write(&index, r#"{"weight_map": {"a": "../../etc/passwd"}}"#).unwrap();
        assert!(index_shards(&index).is_err());
        std::fs::write(&index, r#"{"weight_map": {"a": "x.safetensors", "b": "x.safetensors"}}"#).unwrap();
        assert_eq!(index_shards(&index).unwrap(), vec!["x.safetensors".to_string()]);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
