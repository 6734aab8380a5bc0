//! The definition versions a worker runs sagas on: a saga is pinned to the digest of
//! the definition it started on ([`SagaState::definition_version`]) and runs on that
//! version to its end, whatever file the worker was started with.
//!
//! Versions the worker loaded from files are known at once; any other is read from the
//! cluster's [`DefinitionRegistry`] the first time a saga needs it and kept. A version
//! that cannot be found is an error the caller must not paper over: the saga is left as
//! it is (its input handed back), never run on another definition.
//!
//! [`SagaState::definition_version`]: saga_core::machine::SagaState::definition_version

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use saga_core::definition::{parse_definition, SagaDefinition};
use saga_ports::{DefinitionRegistry, PortError};

/// Why the definition of a version is not available.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VersionError {
    /// No definition of this type is loaded or registered: the input is dead-lettered
    /// as for any unknown type. Not retryable.
    #[error("unknown saga type `{0}`")]
    UnknownType(String),
    /// The version is neither loaded nor in the registry (deleted, or pushed to another
    /// cluster). The saga is left untouched and its input handed back: retryable once
    /// an operator pushes that version again (`sagactl def push`).
    #[error(
        "definition version {digest} of `{saga_type}` is not loaded and not in the registry: \
         the saga is left as it is (push that version with `sagactl def push`)"
    )]
    Missing {
        /// Saga type.
        saga_type: String,
        /// The version the saga is pinned to.
        digest: String,
    },
    /// The registry could not be read. Retryable.
    #[error("reading definition version {digest} of `{saga_type}`: {source}")]
    Unavailable {
        /// Saga type.
        saga_type: String,
        /// The version looked for.
        digest: String,
        /// What the registry said.
        #[source]
        source: PortError,
    },
    /// The registry holds something that is not that version (does not validate, or
    /// has another digest). Not retryable: an operator must repair the registry.
    #[error("definition version {digest} of `{saga_type}` in the registry is unusable: {why}")]
    Invalid {
        /// Saga type.
        saga_type: String,
        /// The version looked for.
        digest: String,
        /// What is wrong.
        why: String,
    },
}

impl VersionError {
    /// Whether the saga may go on later (the version may appear, the registry recover).
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Missing { .. } | Self::Unavailable { .. })
    }
}

/// The versions of a worker: the digest new sagas of each type start on, every version
/// loaded so far, and the registry to load the others from.
pub struct Versions {
    /// By type: the digest new sagas start on, and its definition.
    latest: std::sync::RwLock<BTreeMap<String, (String, Arc<SagaDefinition>)>>,
    known: Mutex<HashMap<(String, String), Arc<SagaDefinition>>>,
    registry: Option<Arc<dyn DefinitionRegistry>>,
}

impl std::fmt::Debug for Versions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Versions")
            .field(
                "latest",
                &*self.latest.read().unwrap_or_else(|e| e.into_inner()),
            )
            .field("registry", &self.registry.is_some())
            .finish_non_exhaustive()
    }
}

impl Versions {
    /// `latest` by type (what new sagas start on), other versions already at hand
    /// (files loaded but not made latest), and the registry of the cluster, if any.
    pub fn new(
        latest: &BTreeMap<String, Arc<SagaDefinition>>,
        others: impl IntoIterator<Item = Arc<SagaDefinition>>,
        registry: Option<Arc<dyn DefinitionRegistry>>,
    ) -> Self {
        let mut known = HashMap::new();
        let mut digests = BTreeMap::new();
        for (t, def) in latest {
            let digest = def.version().digest;
            known.insert((t.clone(), digest.clone()), def.clone());
            digests.insert(t.clone(), (digest, def.clone()));
        }
        for def in others {
            known.insert((def.name.clone(), def.version().digest), def);
        }
        Self {
            latest: std::sync::RwLock::new(digests),
            known: Mutex::new(known),
            registry,
        }
    }

    /// Only the given definitions, each the latest of its type, and no registry (tests,
    /// single-process tools).
    pub fn local(latest: &BTreeMap<String, Arc<SagaDefinition>>) -> Self {
        Self::new(latest, [], None)
    }

    /// The digest new sagas of a type start on.
    pub fn latest(&self, saga_type: &str) -> Option<String> {
        self.latest_definition(saga_type).map(|(digest, _)| digest)
    }

    /// The version new sagas of a type start on: its digest and definition.
    pub fn latest_definition(&self, saga_type: &str) -> Option<(String, Arc<SagaDefinition>)> {
        self.latest
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(saga_type)
            .cloned()
    }

    /// Runs `def` for the latest version of its type under that version's digest: stands
    /// in, in tests, for a build whose code reads a version differently (what replay
    /// verification catches). Not for production use.
    #[doc(hidden)]
    pub fn run_latest_as(&self, def: Arc<SagaDefinition>) {
        let mut latest = self.latest.write().unwrap_or_else(|e| e.into_inner());
        if let Some((_, d)) = latest.get_mut(&def.name) {
            *d = def;
        }
    }

    /// Reads the registry's latest version of every type this worker starts sagas of,
    /// and starts new sagas on it from now on (`sagactl def push` takes effect without
    /// a restart). Returns the types whose latest changed, with the new digest. A
    /// registry that cannot be read, or a version that does not load, changes nothing
    /// (logged); sagas already started keep their version either way.
    pub async fn refresh_latest(&self) -> Vec<(String, String)> {
        let Some(registry) = &self.registry else {
            return Vec::new();
        };
        let types: Vec<(String, String)> = self
            .latest
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(t, (d, _))| (t.clone(), d.clone()))
            .collect();
        let mut changed = Vec::new();
        for (saga_type, current) in types {
            let digest = match registry.latest(&saga_type).await {
                Ok(Some(d)) if d != current => d,
                Ok(_) => continue,
                Err(e) => {
                    tracing::warn!(%saga_type, error = %e, "reading the latest definition version failed");
                    continue;
                }
            };
            match self.get(&saga_type, &digest).await {
                Ok(def) => {
                    tracing::info!(%saga_type, from = %current, to = %digest, label = ?def.version_label, "new sagas of this type now start on another definition version");
                    self.latest
                        .write()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(saga_type.clone(), (digest.clone(), def));
                    changed.push((saga_type, digest));
                }
                Err(e) => {
                    tracing::error!(%saga_type, %digest, error = %e, "the registry's latest definition version cannot be used: new sagas stay on the current one");
                }
            }
        }
        changed
    }

    /// The definition of one version: at hand, or read from the registry (and kept).
    pub async fn get(
        &self,
        saga_type: &str,
        digest: &str,
    ) -> Result<Arc<SagaDefinition>, VersionError> {
        let key = (saga_type.to_string(), digest.to_string());
        if let Some(def) = self.lock().get(&key) {
            return Ok(def.clone());
        }
        let missing = || VersionError::Missing {
            saga_type: saga_type.to_string(),
            digest: digest.to_string(),
        };
        let Some(registry) = &self.registry else {
            return Err(missing());
        };
        let found = registry
            .get(saga_type, digest)
            .await
            .map_err(|source| VersionError::Unavailable {
                saga_type: saga_type.to_string(),
                digest: digest.to_string(),
                source,
            })?
            .ok_or_else(missing)?;
        let def = Arc::new(checked(saga_type, digest, &found.source)?);
        tracing::info!(saga_type, digest, label = ?def.version_label, "definition version loaded from the registry");
        self.lock().insert(key, def.clone());
        Ok(def)
    }

    /// Every version of a type at hand, after reading those the registry holds (used to
    /// judge a reply before its saga is loaded; a registry that cannot be read leaves
    /// what is at hand).
    pub async fn all_of(&self, saga_type: &str) -> Vec<Arc<SagaDefinition>> {
        if let Some(registry) = &self.registry {
            match registry.list().await {
                Ok(all) => {
                    for v in all.into_iter().filter(|v| v.saga_type == saga_type) {
                        let key = (v.saga_type.clone(), v.digest.clone());
                        if self.lock().contains_key(&key) {
                            continue;
                        }
                        match checked(saga_type, &v.digest, &v.source) {
                            Ok(def) => {
                                self.lock().insert(key, Arc::new(def));
                            }
                            Err(e) => tracing::warn!(error = %e, "skipping a registered version"),
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "listing definition versions failed"),
            }
        }
        self.lock()
            .iter()
            .filter(|((t, _), _)| t == saga_type)
            .map(|(_, d)| d.clone())
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), Arc<SagaDefinition>>> {
        self.known.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// What a worker runs on after [`register`]: the definition new sagas of each type
/// start on, and every version at hand.
#[derive(Debug)]
pub struct Registered {
    /// By type: the latest version (the cluster's, which may be another worker's).
    pub latest: BTreeMap<String, Arc<SagaDefinition>>,
    /// The versions, with the registry to load the others from.
    pub versions: Versions,
}

/// Registers the definitions a worker loaded (`<type>.<digest>` written if absent) and,
/// when `make_latest`, makes each the latest of its type; a type with no latest yet
/// gets the loaded one either way. New sagas then start on the cluster's latest
/// version of their type, read back from the registry (so a worker started with an
/// older file, `make_latest` off, still starts sagas on the newest version).
pub async fn register(
    registry: Arc<dyn DefinitionRegistry>,
    loaded: Vec<(Arc<SagaDefinition>, String)>,
    make_latest: bool,
) -> Result<Registered, VersionError> {
    let unavailable =
        |def: &SagaDefinition, digest: &str, source: PortError| VersionError::Unavailable {
            saga_type: def.name.clone(),
            digest: digest.to_string(),
            source,
        };
    let mut files = Vec::new();
    for (def, source) in loaded {
        let digest = def.version().digest;
        let new = registry
            .register(&def.name, &digest, &source)
            .await
            .map_err(|e| unavailable(&def, &digest, e))?;
        let latest = registry
            .latest(&def.name)
            .await
            .map_err(|e| unavailable(&def, &digest, e))?;
        if (make_latest || latest.is_none()) && latest.as_deref() != Some(digest.as_str()) {
            registry
                .set_latest(&def.name, &digest)
                .await
                .map_err(|e| unavailable(&def, &digest, e))?;
        }
        tracing::info!(saga_type = %def.name, %digest, label = ?def.version_label, new, "definition version registered");
        files.push(def);
    }
    let versions = Versions::new(&BTreeMap::new(), files.clone(), Some(registry.clone()));
    let mut latest = BTreeMap::new();
    for def in &files {
        let here = def.version().digest;
        let digest = registry
            .latest(&def.name)
            .await
            .map_err(|e| unavailable(def, &here, e))?
            .unwrap_or(here);
        let current = versions.get(&def.name, &digest).await?;
        latest.insert(def.name.clone(), current);
    }
    Ok(Registered {
        versions: Versions::new(&latest, files, Some(registry)),
        latest,
    })
}

/// Parses a registered source and checks that it is the version it is stored as.
fn checked(saga_type: &str, digest: &str, source: &str) -> Result<SagaDefinition, VersionError> {
    let invalid = |why: String| VersionError::Invalid {
        saga_type: saga_type.to_string(),
        digest: digest.to_string(),
        why,
    };
    let def = parse_definition(&format!("registry {saga_type}.{digest}"), source)
        .map_err(|e| invalid(e.to_string()))?
        .definition;
    let actual = def.version().digest;
    if def.name != saga_type || actual != digest {
        return Err(invalid(format!(
            "it is {} version {actual} (this runtime renders definitions differently, or the \
             entry was edited)",
            def.name
        )));
    }
    Ok(def)
}

#[cfg(test)]
mod tests {
    use super::*;
    use saga_ports::memory::MemoryDefinitionRegistry;

    const V1: &str = "saga:\n  name: T\n  steps:\n    - {name: A, service: s, action: a}\n";
    const V2: &str = "saga:\n  name: T\n  steps:\n    - {name: B, service: s, action: b}\n";

    fn def(text: &str) -> Arc<SagaDefinition> {
        Arc::new(parse_definition("t.yaml", text).unwrap().definition)
    }

    #[tokio::test]
    async fn a_version_not_at_hand_comes_from_the_registry_and_a_missing_one_is_an_error() {
        let (v1, v2) = (def(V1), def(V2));
        let d1 = v1.version().digest;
        let registry = MemoryDefinitionRegistry::default();
        let latest = BTreeMap::from([("T".to_string(), v2.clone())]);
        let versions = Versions::new(&latest, [], Some(Arc::new(registry.clone())));
        assert_eq!(versions.latest("T"), Some(v2.version().digest));
        let e = versions.get("T", &d1).await.unwrap_err();
        assert!(
            matches!(e, VersionError::Missing { .. }) && e.is_retryable(),
            "{e}"
        );
        registry.register("T", &d1, V1).await.unwrap();
        assert_eq!(versions.get("T", &d1).await.unwrap(), v1);
        // A source stored under another digest is refused, not run.
        registry
            .register("T", "0000000000000000", V1)
            .await
            .unwrap();
        let e = versions.get("T", "0000000000000000").await.unwrap_err();
        assert!(matches!(e, VersionError::Invalid { .. }), "{e}");
        assert_eq!(versions.all_of("T").await.len(), 2);
    }

    #[tokio::test]
    async fn registering_makes_the_file_latest_unless_told_not_to() {
        let (v1, v2) = (def(V1), def(V2));
        let registry = Arc::new(MemoryDefinitionRegistry::default());
        let r = register(registry.clone(), vec![(v1.clone(), V1.into())], false)
            .await
            .unwrap();
        // The first version of a type becomes its latest either way.
        assert_eq!(r.latest["T"], v1);
        let r = register(registry.clone(), vec![(v2.clone(), V2.into())], true)
            .await
            .unwrap();
        assert_eq!(r.latest["T"], v2);
        // A worker started with the older file, not making it latest, starts new
        // sagas on the newest version and still has the older at hand.
        let r = register(registry.clone(), vec![(v1.clone(), V1.into())], false)
            .await
            .unwrap();
        assert_eq!(r.latest["T"], v2);
        assert_eq!(r.versions.get("T", &v1.version().digest).await.unwrap(), v1);
        assert_eq!(registry.list().await.unwrap().len(), 2);
    }
}
