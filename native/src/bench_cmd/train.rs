//! `clo bench train`: a training step timed on one device or several, and its PyTorch side.

use super::*;

pub(super) fn bench_train(args: &TrainBenchArgs) -> anyhow::Result<Printed> {
    let common = &args.common;
    let subject = subject(common)?;
    let method: Method = args.method.parse()?;
    let trainable: TrainableKind = args.trainable.parse()?;
    let run_config = RunConfig {
        method,
        trainable,
        batch_size: args.batch_size,
        lr: args.lr,
        grad_checkpoint: args.grad_checkpoint,
        logp_chunk: args.logp_chunk,
        attention: args.attention,
        dtype: common.dtype,
        ..RunConfig::default()
    };
    let decoder = &subject.config.decoder;
    clo_core::limits::BATCH_SIZE.check_as("--batch-size", "clo bench train", args.batch_size)?;
    clo_core::limits::MAX_LEN.check_as("--seq-len", "clo bench train", args.seq_len)?;
    if args.seq_len > decoder.max_position_embeddings {
        bail!(
            "--seq-len {} exceeds the model's context of {} tokens",
            args.seq_len,
            decoder.max_position_embeddings
        );
    }
    let work = TrainWork::new(
        method,
        args.batch_size,
        args.seq_len,
        decoder.vocab_size,
        common.seed,
    )?;
    let objective = clo_core::train::run::objective(method, &run_config);
    let machine = machine(&common.device);
    let (peak, peak_source) = peak_flops(common, &machine);
    let row_lens: Vec<usize> = work
        .rows
        .iter()
        .map(|(p, r)| p.len() + r.len() - 1)
        .collect();
    let flops = MatmulParams::of(decoder).train_flops(&row_lens, trainable, run_config.lora_rank);
    let devices = match &args.devices {
        Some(list) => parse_devices(list)?,
        None => vec![parse_device(&common.device)?],
    };
    let stored_bytes = common.dtype.bytes(&devices[0])?;
    let predicted = clo_core::bench::train_memory(
        decoder,
        &clo_core::bench::StepShape {
            rows: work.rows.len(),
            seq: args.seq_len,
            trainable,
            lora_rank: run_config.lora_rank,
            stored_bytes,
            grad_checkpoint: args.grad_checkpoint,
            logp_chunk: args.logp_chunk,
            attention: args.attention,
        },
    );
    let gib = |b: f64| b / (1u64 << 30) as f64;
    let prediction = format!(
        "memory model: {:.2} GiB predicted (weights {:.2}, optimizer {:.2}, activations {:.2}, output layer {:.2}, process {:.2})",
        gib(predicted.total),
        gib(predicted.weights),
        gib(predicted.optimizer),
        gib(predicted.activations),
        gib(predicted.head),
        gib(predicted.process)
    );
    // What was asked: the report's first fields, with or without a run.
    let mut value = json!({
        "kind": "train",
        "model": subject.label,
        "method": method.name(),
        "trainable": args.trainable,
        "batch_size": args.batch_size,
        "seq_len": args.seq_len,
        "rows": work.rows.len(),
        "grad_checkpoint": args.grad_checkpoint,
        "logp_chunk": args.logp_chunk,
        "attention": args.attention.to_string(),
        "predicted_memory": predicted,
    });
    if args.predict_memory {
        value["dtype"] = json!(common.dtype);
        return Ok(Printed {
            json: common.json,
            value,
            text: format!(
                "clo bench train --predict-memory: {}, {} ({}), {} rows x {} tokens, {}\n{prediction}\n",
                subject.label,
                method.name(),
                args.trainable,
                work.rows.len(),
                args.seq_len,
                common.dtype
            ),
        });
    }
    clo_core::limits::check_fits(
        &format!("clo bench train on {}", subject.label),
        predicted.total,
        "lower --batch-size or --seq-len, or add --grad-checkpoint and --logp-chunk; --predict-memory prints the estimate without running",
    )?;

    // The specs as given (`all`: the discrete GPUs it found, wgpu:0..N).
    let specs: Vec<String> = match &args.devices {
        Some(list) if list.trim() == "all" => {
            (0..devices.len()).map(|n| format!("wgpu:{n}")).collect()
        }
        Some(list) => list.split(',').map(|s| s.trim().to_string()).collect(),
        None => vec![common.device.clone()],
    };
    let measure = |k: usize| -> anyhow::Result<Timed> {
        time_train_steps(StepJob {
            subject: &subject,
            run_config: &run_config,
            objective,
            work: &work,
            devices: &devices[..k],
            specs: &specs[..k],
            common,
            lr: args.lr,
        })
    };
    let tokens = work.tokens();
    let mut scaling = Vec::new();
    let mut single_tps = None;
    let (mut times, mut losses, mut memories) = (Vec::new(), Vec::new(), Vec::new());
    for k in if devices.len() > 1 {
        1..=devices.len()
    } else {
        1..=1
    } {
        let (t, l, m) = measure(k)?;
        let side = Side::new(t.clone(), common.warmup, tokens, flops, peak);
        let tps = side.tokens_per_s;
        let single = *single_tps.get_or_insert(tps);
        scaling.push(json!({
            "devices": specs[..k],
            "median_step_s": side.median_step_s,
            "tokens_per_s": tps,
            "peak_memory_bytes": m,
            "efficiency": tps / (k as f64 * single),
        }));
        (times, losses, memories) = (t, l, m);
    }
    let mut clo = Side::new(times, common.warmup, tokens, flops, peak);
    clo.losses = losses;
    clo.device_name = if devices.len() > 1 {
        specs.join(",")
    } else {
        machine
            .adapter
            .clone()
            .unwrap_or_else(|| "cpu (Flex)".into())
    };
    clo.peak_memory_bytes = memories.iter().flatten().copied().max();
    clo.memory_kind = if specs.iter().all(|s| !s.starts_with("wgpu")) {
        "peak RSS".into()
    } else if devices.len() > 1 {
        "largest device's pool reserved (max after each step)".into()
    } else {
        "device pool reserved (max after each step)".into()
    };

    let torch = match &common.compare_torch {
        Some(python) => {
            let spec = json!({
                "kind": "train",
                "config": subject.hf_config,
                "model_dir": subject.model_dir,
                "rows": work.rows,
                "objective": objective,
                "trainable": trainable,
                "lora_rank": run_config.lora_rank,
                "lora_alpha": run_config.lora_alpha,
                "lora_targets": run_config.lora_targets,
                "lr": args.lr,
                "weight_decay": run_config.weight_decay,
                "max_grad_norm": run_config.max_grad_norm,
            });
            let out = run_torch(python, spec, common, &machine)?;
            let mut side = torch_side(&out, common.warmup, tokens, flops, peak)?;
            side.losses = f64s(&out["losses"]);
            Some(side)
        }
        None => None,
    };
    let head = format!(
        "clo bench train: {}, {} ({}), {} {} x {} tokens ({} rows), {}, {}",
        subject.label,
        method.name(),
        args.trainable,
        args.batch_size,
        match method {
            Method::Clo => "quadruples",
            Method::Dpo => "pairs",
            _ => "sft pairs",
        },
        args.seq_len,
        work.rows.len(),
        common.dtype,
        common.device
    );
    value["tokens_per_step"] = json!(tokens);
    value["lr"] = json!(args.lr);
    let mut head = format!("{head}\n{prediction}");
    if devices.len() > 1 {
        value["scaling"] = Value::Array(scaling.clone());
        head.push_str(
            "\n  data parallel: devices  median step  tokens/s  efficiency  peak memory per device",
        );
        for row in &scaling {
            let mem: Vec<String> = row["peak_memory_bytes"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|m| {
                            m.as_f64().map_or("-".into(), |b| {
                                format!("{:.2} GiB", b / (1u64 << 30) as f64)
                            })
                        })
                        .collect()
                })
                .unwrap_or_default();
            head.push_str(&format!(
                "\n    {:<24} {:>8.3} s {:>9.1} {:>10.2}x  {}",
                row["devices"]
                    .as_array()
                    .map(|d| d
                        .iter()
                        .filter_map(|x| x.as_str())
                        .collect::<Vec<_>>()
                        .join(","))
                    .unwrap_or_default(),
                row["median_step_s"].as_f64().unwrap_or(f64::NAN),
                row["tokens_per_s"].as_f64().unwrap_or(f64::NAN),
                row["efficiency"].as_f64().unwrap_or(f64::NAN),
                mem.join(" / ")
            ));
        }
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

/// Each timed step's seconds and loss, and each device's peak memory.
type Timed = (Vec<f64>, Vec<f64>, Vec<Option<u64>>);

/// Times `warmup + steps` optimizer steps of `work` with the model on `devices` (data parallel
/// when more than one): each step's seconds and loss, and each device's peak memory (the
/// process's peak RSS for CPU devices, the allocator's reserved bytes for wgpu ones).
/// The timed training of [`time_train_steps`]: the model, the run's settings and objective, the
/// work, the devices (with their specs as given) and the learning rate.
struct StepJob<'a> {
    subject: &'a Subject,
    run_config: &'a RunConfig,
    objective: clo_core::train::Objective,
    work: &'a TrainWork,
    devices: &'a [Device],
    specs: &'a [String],
    common: &'a Common,
    lr: f64,
}

fn time_train_steps(job: StepJob<'_>) -> anyhow::Result<Timed> {
    let StepJob {
        subject,
        run_config,
        objective,
        work,
        devices,
        specs,
        common,
        lr,
    } = job;
    let device = devices[0].clone();
    let ad = run_config.autodiff_device(&device);
    let model = build_model(subject, &ad, common.seed)?;
    let model = run_config.trainable_model(model, &ad)?;
    let mut memory: Vec<MemoryWatch> = devices
        .iter()
        .zip(specs)
        .map(|(d, s)| MemoryWatch::new(d, s))
        .collect();
    let reference = if objective.needs_reference() {
        let plain = model.valid();
        let batch = collate(&work.pairs(), &device);
        let (sums, _) = batch_logps(&plain, &batch);
        sums.into_data()
            .try_into_vec_as::<f32>()
            .map_err(|e| anyhow::anyhow!("reading reference log-probs: {e:?}"))?
    } else {
        Vec::new()
    };
    let batch = work.micro_batch(reference);
    let mut trainer = Trainer::new(
        objective,
        OptimizerSettings::fine_tuning(run_config.weight_decay, run_config.max_grad_norm),
    )
    .with_logp_chunk(run_config.logp_chunk)
    .with_grad_checkpoint(run_config.grad_checkpoint)
    .with_replicas(
        &devices[1..]
            .iter()
            .map(|d| run_config.autodiff_device(d))
            .collect::<Vec<_>>(),
    );
    let (mut times, mut losses) = (Vec::new(), Vec::new());
    let mut model = model;
    for _ in 0..common.warmup + common.steps {
        let t0 = Instant::now();
        let (next, report) = trainer.step(model, std::slice::from_ref(&batch), lr)?;
        times.push(t0.elapsed().as_secs_f64());
        losses.push(report.loss);
        model = next;
        memory.iter_mut().for_each(MemoryWatch::sample);
    }
    drop(model);
    let peaks = memory
        .iter()
        .map(|m| {
            let mut side = Side::new(vec![1.0], 0, 1, 0.0, None);
            m.finish(&mut side);
            side.peak_memory_bytes
        })
        .collect();
    Ok((times, losses, peaks))
}
