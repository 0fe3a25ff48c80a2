//! How long planning a large real document takes: GitHub's REST API description
//! (api.github.com and GitHub Enterprise Cloud, ~1,200 and ~1,500 operations,
//! 13-14 MB of JSON), parsed and planned as the import endpoint does. The
//! documents come with `@octokit/openapi` in tests/typescript (installed by
//! `deploy/local/test`); without them the benchmark says so and measures nothing.

use std::{hint::black_box, path::PathBuf};

use criterion::{Criterion, criterion_group, criterion_main};
use tengine_openapi::{Options, Outcome, parse, plan};

fn document(name: &str) -> Option<Vec<u8>> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/typescript/node_modules/@octokit/openapi/generated")
        .join(name);
    std::fs::read(&path)
        .map_err(|e| eprintln!("skipping {name}: {} ({e}); run deploy/local/test once", path.display()))
        .ok()
}

fn planning(c: &mut Criterion) {
    for name in ["api.github.com.json", "ghec.json"] {
        let Some(bytes) = document(name) else { continue };
        let options = Options::default();
        let once = plan(&parse(&bytes).expect("parses"), &options).expect("plans");
        let tools = once
            .operations
            .iter()
            .filter(|o| matches!(o.outcome, Outcome::Tool(_)))
            .count();
        eprintln!(
            "{name}: {} bytes, {} operations, {tools} tools, {} skipped",
            bytes.len(),
            once.operations.len(),
            once.operations.len().saturating_sub(tools)
        );
        let mut group = c.benchmark_group("openapi_import");
        group.sample_size(10);
        group.bench_function(format!("parse_and_plan/{name}"), |b| {
            b.iter(|| plan(&parse(black_box(&bytes)).expect("parses"), &options).expect("plans"))
        });
        // What the import endpoint adds before it reads the database: every
        // tool's schemas compiled, as the admin API compiles any tool's.
        group.bench_function(format!("parse_plan_and_compile/{name}"), |b| {
            b.iter(|| {
                let planned = plan(&parse(black_box(&bytes)).expect("parses"), &options).expect("plans");
                for operation in &planned.operations {
                    if let Outcome::Tool(tool) = &operation.outcome {
                        let _ = black_box(jsonschema::validator_for(&tool.spec.input_schema));
                        if let Some(output) = &tool.spec.output_schema {
                            let _ = black_box(jsonschema::validator_for(output));
                        }
                    }
                }
            })
        });
        group.finish();
    }
}

criterion_group!(benches, planning);
criterion_main!(benches);
