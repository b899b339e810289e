//! Saving models in HF layout (`config.json` + `model.safetensors`), atomically, loadable by
//! `s6` and by HF transformers' `MambaForCausalLM.from_pretrained`.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use super::mamba1::ParamSpec;
use crate::config::{InitConfig, MambaConfig};
use crate::formats::tensors::{write_atomic, write_safetensors, OutTensor, SaveDType};
use crate::{Error, Result};

/// Writes `config.json` and `model.safetensors` into `dir` (created if needed).
pub fn save_hf(
    dir: &Path,
    cfg: &MambaConfig,
    init: &InitConfig,
    params: &[(ParamSpec, Vec<f32>)],
    dtype: SaveDType,
) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let mut map = BTreeMap::new();
    for (spec, values) in params {
        map.insert(spec.name.clone(), OutTensor::from_f32(values, &spec.shape, dtype));
    }
    let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
    write_safetensors(&dir.join("model.safetensors"), &map, Some(meta))?;
    let mut json = cfg.to_hf_json(init);
    if dtype != SaveDType::F32 {
        json["dtype"] = serde_json::Value::from(if dtype == SaveDType::BF16 { "bfloat16" } else { "float16" });
    }
    let text = serde_json::to_string_pretty(&json).map_err(|e| Error::format(dir, e.to_string()))?;
    write_atomic(&dir.join("config.json"), text.as_bytes())
}
