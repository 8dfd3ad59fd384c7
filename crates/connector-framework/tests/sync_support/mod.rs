#![allow(dead_code, clippy::unwrap_used)]

use std::sync::{Arc, Mutex};

use connector_framework::{
    EsClient,
    job::{JobContext, JobCounters, JobReporter, JobSpec, ReportError},
    model::{Enabled, Features, FilteringRules, JobType, Pipeline},
    testing::GeneratorConfig,
};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

/// Records counters and checkpoints; optionally cancels the job after N checkpoints.
#[derive(Default)]
pub struct Recorder {
    pub counters: Mutex<Vec<JobCounters>>,
    pub checkpoints: Mutex<Vec<Value>>,
    pub cancel_after: Option<(usize, CancellationToken)>,
}

#[async_trait::async_trait]
impl JobReporter for Recorder {
    fn counters(&self, counters: JobCounters) {
        self.counters.lock().unwrap().push(counters);
    }

    async fn checkpoint(&self, checkpoint: Value) -> Result<(), ReportError> {
        let n = {
            let mut v = self.checkpoints.lock().unwrap();
            v.push(checkpoint);
            v.len()
        };
        if let Some((after, token)) = &self.cancel_after
            && n >= *after
        {
            token.cancel();
        }
        Ok(())
    }
}

impl Recorder {
    pub fn last_checkpoint(&self) -> Option<Value> {
        self.checkpoints.lock().unwrap().last().cloned()
    }
}

pub fn features(dls: bool, rules: bool) -> Features {
    let on = |b| if b { Enabled::ON } else { Enabled::OFF };
    let mut f = Features {
        document_level_security: on(dls),
        incremental_sync: Enabled::ON,
        ..Default::default()
    };
    f.sync_rules.basic = on(rules);
    f
}

pub fn spec(job_type: JobType, index: &str, cfg: &GeneratorConfig) -> JobSpec {
    JobSpec {
        job_id: format!("job-{}", uuid_like()),
        connector_id: "conn-1".into(),
        job_type,
        service_type: "generator".into(),
        index_name: index.to_owned(),
        language: None,
        pipeline: Pipeline::default(),
        configuration: cfg.to_configuration(),
        filtering: FilteringRules::default(),
        features: features(cfg.use_document_level_security, false),
        sync_cursor: None,
        checkpoint: None,
    }
}

fn uuid_like() -> u64 {
    use std::time::{SystemTime, UNIX_EPOCH};
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

pub fn context(es: &EsClient, recorder: Arc<Recorder>, cancel: CancellationToken) -> JobContext {
    JobContext {
        es: es.clone(),
        cancel,
        reporter: recorder,
    }
}
