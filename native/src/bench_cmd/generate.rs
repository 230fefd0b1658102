//! `clo bench generate`: greedy generation timed, and its PyTorch side.

use super::*;

pub(super) fn bench_generate(args: &GenerateBenchArgs) -> anyhow::Result<Printed> {
    let common = &args.common;
    let subject = subject(common)?;
    let decoder = &subject.config.decoder;
    if args.seq_len + args.new_tokens > decoder.max_position_embeddings {
        bail!(
            "--seq-len {} + --new-tokens {} exceed the model's context of {} tokens",
            args.seq_len,
            args.new_tokens,
            decoder.max_position_embeddings
        );
    }
    if args.batch_size == 0 || args.new_tokens == 0 {
        bail!("--batch-size and --new-tokens must be at least 1");
    }
    let prompts = generation_prompts(
        args.batch_size,
        args.seq_len,
        decoder.vocab_size,
        common.seed,
    );
    let machine = machine(&common.device);
    let (peak, peak_source) = peak_flops(common, &machine);
    let flops =
        MatmulParams::of(decoder).generate_flops(args.batch_size, args.seq_len, args.new_tokens);
    let device = parse_device(&common.device)?;
    let model = build_model(&subject, &device, common.seed)?
        .store_frozen_in(common.dtype.resolve(&device)?);
    let mut memory = MemoryWatch::new(&device, &common.device);
    let configs = vec![
        SamplingConfig {
            temperature: 0.0,
            top_p: 1.0,
            seed: common.seed,
            max_new_tokens: args.new_tokens,
        };
        args.batch_size
    ];
    let mut times = Vec::new();
    let mut ids = Vec::new();
    for _ in 0..common.warmup + common.steps {
        let t0 = Instant::now();
        let out = generate_batch(&model, &prompts, &[], &configs, &device, |_, _| {});
        times.push(t0.elapsed().as_secs_f64());
        ids = out.into_iter().map(|g| g.ids).collect::<Vec<_>>();
        memory.sample();
    }
    drop(model);
    let tokens = args.batch_size * args.new_tokens;
    let mut clo = Side::new(times, common.warmup, tokens, flops, peak);
    clo.device_name = machine
        .adapter
        .clone()
        .unwrap_or_else(|| "cpu (Flex)".into());
    memory.finish(&mut clo);
    let mut agreement = None;
    let torch = match &common.compare_torch {
        Some(python) => {
            let spec = json!({
                "kind": "generate",
                "config": subject.hf_config,
                "model_dir": subject.model_dir,
                "prompts": prompts,
                "new_tokens": args.new_tokens,
            });
            let out = run_torch(python, spec, common, &machine)?;
            let theirs: Vec<Vec<u32>> = serde_json::from_value(out["ids"].clone())
                .context("the PyTorch script's generated ids")?;
            // With the same weights (a model directory), greedy decoding agrees token for
            // token until float rounding flips a near tie.
            if subject.model_dir.is_some() {
                let same: usize = ids
                    .iter()
                    .zip(&theirs)
                    .map(|(a, b)| a.iter().zip(b).take_while(|(x, y)| x == y).count())
                    .sum();
                agreement = Some(same as f64 / tokens as f64);
            }
            Some(torch_side(&out, common.warmup, tokens, flops, peak)?)
        }
        None => None,
    };
    let head = format!(
        "clo bench generate: {}, greedy, {} x {} prompt tokens + {} new, {}, {}",
        subject.label, args.batch_size, args.seq_len, args.new_tokens, common.dtype, common.device
    );
    let mut value = json!({
        "kind": "generate",
        "model": subject.label,
        "batch_size": args.batch_size,
        "seq_len": args.seq_len,
        "new_tokens": args.new_tokens,
        "generated_tokens": tokens,
    });
    if let Some(a) = agreement {
        value["greedy_prefix_agreement"] = json!(a);
    }
    Ok(finish(
        &mut value,
        Report {
            head,
            common,
            machine: &machine,
            flops,
            peak: (peak, peak_source),
            clo,
            torch,
        },
    ))
}
