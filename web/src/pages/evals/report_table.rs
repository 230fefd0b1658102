//! One table of the eval report: systems by language (value ± standard error), and its grouped
//! bar chart (one group per language, one bar per system).

use std::collections::BTreeSet;

use leptos::prelude::*;
use leptos_chartistry::{
    AspectRatio, AxisMarker, Bar, Chart, IntoInner, Legend, Series, TickLabels, YGridLine,
};

use crate::types::ReportTable as Table;

/// The bars of one language: its position on the x axis and each system's value.
#[derive(Debug, Clone, PartialEq)]
struct Group {
    x: f64,
    values: Vec<f64>,
}

#[component]
pub fn ReportTable(table: Table) -> impl IntoView {
    let langs: Vec<String> = table
        .rows
        .values()
        .flat_map(|per| per.keys().cloned())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let systems: Vec<String> = table.rows.keys().cloned().collect();
    let head = langs
        .iter()
        .map(|l| view! { <th>{l.clone()}</th> })
        .collect_view();
    let body = table
        .rows
        .iter()
        .map(|(system, per)| {
            let cells = langs
                .iter()
                .map(|l| {
                    let text = per.get(l).map_or_else(
                        || "–".to_string(),
                        |e| format!("{:.3} ± {:.3}", e.value, e.stderr),
                    );
                    view! { <td>{text}</td> }
                })
                .collect_view();
            view! { <tr><th scope="row">{system.clone()}</th>{cells}</tr> }
        })
        .collect_view();
    let groups: Vec<Group> = langs
        .iter()
        .enumerate()
        .map(|(i, l)| Group {
            x: i as f64,
            values: systems
                .iter()
                .map(|s| table.rows[s].get(l).map_or(f64::NAN, |e| e.value))
                .collect(),
        })
        .collect();
    // Shares in [0, 1]; half a group of room on either side of the bars.
    let mut series = Series::new(|g: &Group| g.x)
        .with_y_range(0.0, 1.0)
        .with_x_range(-0.5, langs.len() as f64 - 0.5);
    for (i, system) in systems.iter().enumerate() {
        series = series.bar(Bar::new(move |g: &Group| g.values[i]).with_name(system.clone()));
    }
    let data = Signal::derive(move || groups.clone());
    let id = table.file.trim_end_matches(".svg").to_string();
    let section_id = id.clone();
    view! {
        <section class="report-table" data-table=section_id>
            <h2>{table.title.clone()}</h2>
            <p>{table.what.clone()}</p>
            <table>
                <thead><tr><th>{table.metric.clone()}</th>{head}</tr></thead>
                <tbody>{body}</tbody>
            </table>
            <figure class="chart" data-chart=id>
                <figcaption>{format!("{}, by language (left to right): {}", table.metric, langs.join(" · "))}</figcaption>
                <Chart
                    aspect_ratio=AspectRatio::from_outer_ratio(560.0, 260.0)
                    series=series
                    data=data
                    left=TickLabels::aligned_floats()
                    right=Legend::end()
                    inner=[
                        AxisMarker::left_edge().into_inner(),
                        AxisMarker::bottom_edge().into_inner(),
                        YGridLine::default().into_inner(),
                    ]
                />
            </figure>
        </section>
    }
}
