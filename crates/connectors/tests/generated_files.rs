//! The committed schema files and configuration reference equal what the code generates.

#[test]
fn generated_files_do_not_drift_from_the_code() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let files = connectors::generated_files();
    assert!(
        files
            .iter()
            .any(|(n, _)| n == "config/schema/gmail.schema.json")
    );
    for (name, content) in files {
        let on_disk = std::fs::read_to_string(root.join(&name)).unwrap_or_default();
        assert!(
            on_disk == content,
            "{name} differs from the code: run `cargo xtask schema` and commit the result"
        );
    }
}

#[test]
fn the_gmail_schema_has_elastic_field_names() {
    let registry = connectors::registry();
    let gmail = registry.get("gmail").expect("gmail is registered");
    let config = gmail.default_configuration();
    for key in [
        "service_account_credentials",
        "subject",
        "customer_id",
        "include_spam_and_trash",
        "use_document_level_security",
    ] {
        assert!(config.contains_key(key), "missing {key}");
    }
    assert_eq!(config["service_account_credentials"]["sensitive"], true);
    assert_eq!(config["service_account_credentials"]["display"], "textarea");
    let err = registry.get("nope").err().expect("unknown type");
    assert!(err.to_string().contains("gmail"), "{err}");
}
