//! The pieces of `clo merge`: quantiles, reversion, layer names and ranges.
use super::*;

/// Linear interpolation between ranks, as numpy.quantile and torch.quantile compute it.
#[test]
fn quantiles_interpolate_between_ranks() {
    let v = [4.0, 1.0, 3.0, 2.0];
    assert_eq!(quantile(&v, 0.0), 1.0);
    assert_eq!(quantile(&v, 1.0), 4.0);
    assert_eq!(quantile(&v, 0.5), 2.5);
    assert!((quantile(&v, 0.3) - 1.9).abs() < 1e-6);
    assert_eq!(quantile(&[7.0], 0.4), 7.0);
}

/// Reversion at Q = 0 changes nothing, at Q = 1 gives the base exactly, and in between reverts
/// the updates below the quantile and keeps the others bit for bit.
#[test]
fn reversion_keeps_the_strong_updates() {
    let base = [0.0f32, 1.0, 2.0, 3.0, 4.0];
    let expert = [0.1f32, 1.5, 2.0, 2.2, 4.9];
    let mut e = expert;
    assert_eq!(revert_weak(&mut e, &base, 0.0), 0);
    assert_eq!(e, expert);
    let mut e = expert;
    assert_eq!(revert_weak(&mut e, &base, 1.0), 5);
    assert_eq!(e, base);
    // |delta| = 0.1, 0.5, 0, 0.8, 0.9; the 0.5-quantile is 0.5: 0.1 and 0 are below it.
    let mut e = expert;
    assert_eq!(revert_weak(&mut e, &base, 0.5), 2);
    assert_eq!(e, [0.0, 1.5, 2.0, 2.2, 4.9]);
}

#[test]
fn layers_are_read_from_names_and_ranges() {
    assert_eq!(
        layer_of("model.layers.12.self_attn.q_proj.weight"),
        Some(12)
    );
    assert_eq!(layer_of("model.embed_tokens.weight"), None);
    assert_eq!(layer_of("model.norm.weight"), None);
    assert_eq!(
        parse_layer_ranges("0-3, 28-31,5", Some(32)).unwrap(),
        vec![0..=3, 28..=31, 5..=5]
    );
    for (bad, why) in [
        ("0-3,2-5", "overlap"),
        ("4-2", "backwards"),
        ("0-40", "out of range"),
        ("a-b", "not a layer"),
        ("", "not a layer"),
    ] {
        let e = parse_layer_ranges(bad, Some(32)).unwrap_err().to_string();
        assert!(e.contains(why), "{bad}: {e}");
    }
}

#[test]
fn recipes_outside_their_bounds_are_refused() {
    for q in [0.0, 1.0, -0.5, f64::NAN] {
        let r = Recipe {
            revert_below: Some(q),
            ..Recipe::default()
        };
        assert!(
            check_recipe(&r)
                .unwrap_err()
                .to_string()
                .contains("between 0 and 1")
        );
    }
    let r = Recipe {
        weights: [1.0, f64::INFINITY],
        ..Recipe::default()
    };
    assert!(check_recipe(&r).is_err());
}
