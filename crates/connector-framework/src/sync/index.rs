//! Content index preparation (spec §8.6).
//!
//! An existing index, or an alias of one, is respected as it is. A missing index is created with
//! mappings and — when the cluster has the `analysis-common` module (edge n-grams, shingles,
//! stemmers, elision, …) — the language analyzers of Elastic's 8.16 service (`iq_text_base`,
//! `iq_text_stem`, `i_prefix`, …). Without `analysis-common` the index is created with mappings
//! only (text fields with the standard analyzer, plus the `enum` keyword sub-field the DLS query
//! needs) and a warning says so.

use serde_json::{Map, Value, json};

use crate::{
    EsClient, EsError,
    es::{HttpMethod, encode_segment},
};

/// What [`prepare_content_index`] or [`create_content_index`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IndexPreparation {
    /// The index (or an alias with that name) existed; nothing was changed.
    Existing,
    /// Created with language analyzers and mappings.
    CreatedWithAnalysis,
    /// Created with mappings only (the cluster lacks `analysis-common`).
    CreatedMappingsOnly,
}

/// Errors of index preparation.
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error("unsupported language {0:?} for the content index")]
    UnknownLanguage(String),
    #[error(transparent)]
    Es(#[from] EsError),
}

impl crate::Classify for IndexError {
    fn kind(&self) -> crate::ErrorKind {
        match self {
            IndexError::UnknownLanguage(_) => crate::ErrorKind::Configuration,
            IndexError::Es(e) => e.kind(),
        }
    }
}

/// Does an index or alias with this name exist?
pub async fn index_exists(es: &EsClient, index: &str) -> Result<bool, EsError> {
    let path = format!("/{}", encode_segment(index));
    let resp = es.send(HttpMethod::Head, &path, &[], None).await?;
    match resp.status {
        200 => Ok(true),
        404 => Ok(false),
        _ => Err(crate::es::api_error(HttpMethod::Head, &path, &resp)),
    }
}

/// Does every node of the cluster have the `analysis-common` module?
pub async fn has_analysis_common(es: &EsClient) -> Result<bool, EsError> {
    let body = es
        .json(
            HttpMethod::Get,
            "/_nodes/plugins",
            &[("filter_path", "nodes.*.modules.name".into())],
            None,
        )
        .await?;
    let Some(nodes) = body["nodes"].as_object() else {
        return Ok(false);
    };
    Ok(!nodes.is_empty()
        && nodes.values().all(|n| {
            n["modules"]
                .as_array()
                .is_some_and(|m| m.iter().any(|m| m["name"] == "analysis-common"))
        }))
}

/// Creates the content index when missing (see the module documentation).
pub async fn prepare_content_index(
    es: &EsClient,
    index: &str,
    language: Option<&str>,
) -> Result<IndexPreparation, IndexError> {
    if index_exists(es, index).await? {
        return Ok(IndexPreparation::Existing);
    }
    create_content_index(es, index, language).await
}

/// Creates the content index `index` (known to be missing: one that appeared meanwhile gives
/// [`IndexPreparation::Existing`]) with the connectors' mappings, and the language's analyzers
/// when the cluster has them.
pub async fn create_content_index(
    es: &EsClient,
    index: &str,
    language: Option<&str>,
) -> Result<IndexPreparation, IndexError> {
    let analysis = has_analysis_common(es).await.unwrap_or_else(|e| {
        tracing::warn!(error = %e, "cannot list cluster modules; assuming no analysis-common");
        false
    });
    let (body, outcome) = if analysis {
        let settings = analysis_settings(language.unwrap_or("en"))?;
        (
            json!({"settings": settings, "mappings": mappings(true)}),
            IndexPreparation::CreatedWithAnalysis,
        )
    } else {
        tracing::warn!(
            index,
            "the cluster has no analysis-common module: creating the content index with mappings only (standard analyzer)"
        );
        (
            json!({"mappings": mappings(false)}),
            IndexPreparation::CreatedMappingsOnly,
        )
    };
    let path = format!("/{}", encode_segment(index));
    let resp = es.send(HttpMethod::Put, &path, &[], Some(&body)).await?;
    if resp.is_success() {
        tracing::info!(index, ?outcome, "created content index");
        return Ok(outcome);
    }
    if resp.body["error"]["type"] == "resource_already_exists_exception" {
        return Ok(IndexPreparation::Existing);
    }
    Err(crate::es::api_error(HttpMethod::Put, &path, &resp).into())
}

/// Mappings of a content index. With `analysis`, strings get the language analyzers and their
/// sub-fields; without, the standard analyzer and the `enum` keyword sub-field only.
pub fn mappings(analysis: bool) -> Value {
    let enum_field = json!({"type": "keyword", "ignore_above": 2048});
    let string_mapping = if analysis {
        json!({
            "type": "text",
            "analyzer": "iq_text_base",
            "index_options": "freqs",
            "fields": {
                "stem": {"type": "text", "analyzer": "iq_text_stem"},
                "prefix": {"type": "text", "analyzer": "i_prefix", "search_analyzer": "q_prefix", "index_options": "docs"},
                "delimiter": {"type": "text", "analyzer": "iq_text_delimiter", "index_options": "freqs"},
                "joined": {"type": "text", "analyzer": "i_text_bigram", "search_analyzer": "q_text_bigram", "index_options": "freqs"},
                "enum": enum_field,
            }
        })
    } else {
        json!({"type": "text", "fields": {"enum": enum_field}})
    };
    json!({
        "dynamic": true,
        "dynamic_templates": [
            {"data": {"match_mapping_type": "string", "mapping": string_mapping}}
        ],
        "properties": {
            "id": {"type": "keyword"},
            "_subextracted_as_of": {"type": "date"},
            "_subextracted_version": {"type": "keyword"},
            crate::sync::GENERATION_FIELD: {"type": "long"},
        }
    })
}

struct Language {
    stemmer: &'static str,
    stop_words: &'static str,
    elision: Option<&'static [&'static str]>,
    cjk: bool,
}

fn language(code: &str) -> Option<Language> {
    const FR: &[&str] = &[
        "l", "m", "t", "qu", "n", "s", "j", "d", "c", "jusqu", "quoiqu", "lorsqu", "puisqu",
    ];
    const IT: &[&str] = &[
        "c", "l", "all", "dall", "dell", "nell", "sull", "coll", "pell", "gl", "agl", "dagl",
        "degl", "negl", "sugl", "un", "m", "t", "s", "v", "d",
    ];
    let l = |stemmer, stop_words| Language {
        stemmer,
        stop_words,
        elision: None,
        cjk: false,
    };
    Some(match code {
        "da" => l("danish", "_danish_"),
        "de" => l("light_german", "_german_"),
        "en" => l("light_english", "_english_"),
        "es" => l("light_spanish", "_spanish_"),
        "fr" => Language {
            elision: Some(FR),
            ..l("light_french", "_french_")
        },
        "it" => Language {
            elision: Some(IT),
            ..l("light_italian", "_italian_")
        },
        "ja" | "ko" | "zh" => Language {
            cjk: true,
            ..l("light_english", "_english_")
        },
        "nl" => l("dutch", "_dutch_"),
        "pt" => l("light_portuguese", "_portuguese_"),
        "pt-br" => l("brazilian", "_brazilian_"),
        "ru" => l("russian", "_russian_"),
        "th" => l("light_english", "_thai_"),
        _ => return None,
    })
}

/// Index settings with the language analyzers of Elastic's 8.16 service (spec §8.6).
pub fn analysis_settings(code: &str) -> Result<Value, IndexError> {
    let lang = language(code).ok_or_else(|| IndexError::UnknownLanguage(code.to_owned()))?;
    let stem = format!("{code}-stem-filter");
    let stop = format!("{code}-stop-words-filter");
    let mut filters = Map::new();
    filters.insert(
        "front_ngram".into(),
        json!({"type": "edge_ngram", "min_gram": 1, "max_gram": 12}),
    );
    filters.insert(
        "delimiter".into(),
        json!({
            "type": "word_delimiter_graph",
            "generate_word_parts": true, "generate_number_parts": true,
            "catenate_words": true, "catenate_numbers": true, "catenate_all": true,
            "preserve_original": false, "split_on_case_change": true, "split_on_numerics": true,
            "stem_english_possessive": true
        }),
    );
    filters.insert(
        "bigram_joiner".into(),
        json!({"type": "shingle", "token_separator": "", "max_shingle_size": 2, "output_unigrams": false}),
    );
    filters.insert(
        "bigram_joiner_unigrams".into(),
        json!({"type": "shingle", "token_separator": "", "max_shingle_size": 2, "output_unigrams": true}),
    );
    filters.insert(
        "bigram_max_size".into(),
        json!({"type": "length", "min": 0, "max": 16}),
    );
    filters.insert(
        stem.clone(),
        json!({"type": "stemmer", "name": lang.stemmer}),
    );
    filters.insert(
        stop.clone(),
        json!({"type": "stop", "stopwords": lang.stop_words}),
    );
    let mut prepended: Vec<String> = Vec::new();
    let mut postpended: Vec<String> = Vec::new();
    if let Some(articles) = lang.elision {
        let name = format!("{code}-elision");
        filters.insert(
            name.clone(),
            json!({"type": "elision", "articles": articles, "articles_case": true}),
        );
        prepended.push(name);
    }
    if lang.cjk {
        postpended.push("cjk_bigram".into());
    }
    let folding = ["cjk_width", "lowercase", "asciifolding"].map(String::from);
    let chain = |parts: &[&[String]]| -> Vec<String> { parts.concat() };
    let stop_v = [stop];
    let stem_v = [stem];
    let analyzer = |tokenizer: &str, filter: Vec<String>| json!({"type": "custom", "tokenizer": tokenizer, "filter": filter});
    let analyzers = json!({
        "i_prefix": analyzer("standard", chain(&[&folding, &["front_ngram".into()]])),
        "q_prefix": analyzer("standard", chain(&[&folding])),
        "iq_text_base": analyzer("standard", chain(&[&folding, &stop_v])),
        "iq_text_stem": analyzer("standard", chain(&[&prepended, &folding, &stop_v, &stem_v, &postpended])),
        "iq_text_delimiter": analyzer("whitespace", chain(&[&prepended, &["delimiter".into()], &folding, &stop_v, &stem_v, &postpended])),
        "i_text_bigram": analyzer("standard", chain(&[&folding, &stem_v, &["bigram_joiner".into(), "bigram_max_size".into()]])),
        "q_text_bigram": analyzer("standard", chain(&[&folding, &stem_v, &["bigram_joiner_unigrams".into(), "bigram_max_size".into()]])),
    });
    Ok(json!({
        "index": {"similarity": {"default": {"type": "BM25"}}},
        "analysis": {"filter": filters, "analyzer": analyzers}
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn french_has_elision_first() {
        let s = analysis_settings("fr").unwrap();
        let stem = &s["analysis"]["analyzer"]["iq_text_stem"]["filter"];
        assert_eq!(stem[0], "fr-elision");
        assert_eq!(
            s["analysis"]["filter"]["fr-stem-filter"]["name"],
            "light_french"
        );
    }

    #[test]
    fn cjk_postpends_bigram() {
        let s = analysis_settings("ja").unwrap();
        let f = s["analysis"]["analyzer"]["iq_text_delimiter"]["filter"]
            .as_array()
            .unwrap();
        assert_eq!(f.last().unwrap(), "cjk_bigram");
    }

    #[test]
    fn unknown_language_is_an_error() {
        assert!(matches!(
            analysis_settings("xx"),
            Err(IndexError::UnknownLanguage(_))
        ));
    }

    #[test]
    fn mappings_only_keep_enum_subfield() {
        let m = mappings(false);
        assert_eq!(
            m["dynamic_templates"][0]["data"]["mapping"]["fields"]["enum"]["type"],
            "keyword"
        );
        assert_eq!(m["properties"]["id"]["type"], "keyword");
    }
}
