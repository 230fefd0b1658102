//! One chart of a run's metrics.

use leptos::prelude::*;
use leptos_chartistry::{
    AspectRatio, AxisMarker, Chart, Interpolation, IntoInner, Legend, Line, MarkerShape, Series,
    TickLabels, XGridLine, YGridLine,
};

use crate::series::{Chart as ChartSpec, SPARSE, present};
use crate::types::StepMetrics;

/// One chart of the run page; lines the method lacks are left out, a chart without lines
/// is not drawn.
#[component]
pub fn MetricChart(spec: &'static ChartSpec, points: RwSignal<Vec<StepMetrics>>) -> impl IntoView {
    let names = Memo::new(move |_| {
        points.with(|p| present(spec, p).iter().map(|(n, _)| *n).collect::<Vec<_>>())
    });
    let data = Signal::derive(move || points.get());
    move || {
        let shown = names.get();
        if shown.is_empty() {
            return ().into_any();
        }
        let mut series = Series::new(|m: &StepMetrics| m.step as f64);
        for (label, get) in spec.lines.iter().filter(|(n, _)| shown.contains(n)) {
            let get = *get;
            let mut line = Line::new(move |m: &StepMetrics| get(m).unwrap_or(f64::NAN))
                .with_name(*label)
                .with_interpolation(Interpolation::Linear);
            if SPARSE.contains(label) {
                line = line.with_marker(MarkerShape::Circle);
            }
            series = series.line(line);
        }
        view! {
            <figure class="chart" data-chart=spec.id>
                <figcaption>{spec.title}</figcaption>
                <Chart
                    aspect_ratio=AspectRatio::from_outer_ratio(560.0, 260.0)
                    series=series
                    data=data
                    left=TickLabels::aligned_floats()
                    bottom=TickLabels::aligned_floats()
                    right=Legend::end()
                    inner=[
                        AxisMarker::left_edge().into_inner(),
                        AxisMarker::bottom_edge().into_inner(),
                        XGridLine::default().into_inner(),
                        YGridLine::default().into_inner(),
                    ]
                />
            </figure>
        }
        .into_any()
    }
}
