//! Any bytes, as the body of any payload kind (JSON, and form for `cognigy-input`), must give
//! an answer and never a panic. The first byte chooses the decoder.
#![no_main]

use std::sync::OnceLock;

use cognihook::config::{PayloadKind, PayloadSpec, PayloadTable};
use cognihook::ingest::payload::{BodyFormat, PayloadDecoder};
use libfuzzer_sys::fuzz_target;

fn schema() -> &'static PayloadDecoder {
    static DECODER: OnceLock<PayloadDecoder> = OnceLock::new();
    DECODER.get_or_init(|| {
        let path = std::env::temp_dir().join(format!("cognihook-fuzz-{}.json", std::process::id()));
        std::fs::write(
            &path,
            r#"{"type": "object", "required": ["conversation"],
                "properties": {"conversation": {"type": "object", "required": ["id", "user"],
                  "properties": {"id": {"type": "string"}, "user": {"type": "string"}}}}}"#,
        )
        .expect("schema file");
        let spec = PayloadSpec::Table(PayloadTable {
            kind: PayloadKind::JsonSchema,
            schema: Some(path),
            pointers: [
                ("sessionId".to_string(), "/conversation/id".to_string()),
                ("userId".to_string(), "/conversation/user".to_string()),
                ("text".to_string(), "/text".to_string()),
            ]
            .into_iter()
            .collect(),
        });
        PayloadDecoder::build(&spec).expect("schema decoder")
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&choice, body)) = data.split_first() else {
        return;
    };
    let builtin = |kind| PayloadDecoder::Builtin(kind);
    let _ = match choice % 7 {
        0 => builtin(PayloadKind::FlowEvent).decode(body, BodyFormat::Json),
        1 => builtin(PayloadKind::Nlu).decode(body, BodyFormat::Json),
        2 => builtin(PayloadKind::CognigyInput).decode(body, BodyFormat::Json),
        3 => builtin(PayloadKind::CognigyInput).decode(body, BodyFormat::Form),
        4 => builtin(PayloadKind::WebhookOutput).decode(body, BodyFormat::Json),
        5 => schema().decode(body, BodyFormat::Json),
        _ => builtin(PayloadKind::VgCallStatus).decode(body, BodyFormat::Json),
    };
});
