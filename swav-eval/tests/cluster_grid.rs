//! The cluster grid: the largest clusters first, each with its most confident images, the
//! label histogram counted per cluster, and a picture sized for what it shows.

use swav_data::{ImageDataset, Shapes10};
use swav_eval::{AssignmentRow, Assignments, cluster_grid};

#[test]
fn the_grid_shows_the_largest_clusters_with_their_most_confident_images() {
    let data = Shapes10::test(1, 40);
    // Cluster 7 gets 20 images, cluster 3 gets 12, cluster 9 gets 8; confidence rises with
    // the index inside each cluster.
    let rows: Vec<AssignmentRow> = (0..40)
        .map(|i| {
            let cluster = if i < 20 {
                7
            } else if i < 32 {
                3
            } else {
                9
            };
            let sample = data.get(i).expect("sample");
            AssignmentRow {
                index: i,
                file: data.describe(i),
                label: sample.label,
                cluster,
                confidence: i as f64 / 40.0,
            }
        })
        .collect();
    let assignments = Assignments {
        head: 0,
        prototypes: 16,
        temperature: 0.1,
        clusters_used: 3,
        purity: None,
        rows: rows.clone(),
        skipped: Vec::new(),
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let png = dir.path().join("grid.png");
    let grid = cluster_grid(&assignments, &data, &png, 2, 5).expect("grid");
    assert_eq!(grid.len(), 2, "the two largest clusters");
    assert_eq!((grid[0].cluster, grid[0].size), (7, 20));
    assert_eq!((grid[1].cluster, grid[1].size), (3, 12));
    assert_eq!(grid[0].shown, [19, 18, 17, 16, 15], "most confident first");
    assert_eq!(grid[1].shown, [31, 30, 29, 28, 27]);
    // The histogram counts the cluster's labels.
    let mut want = vec![0usize; 10];
    for r in rows.iter().filter(|r| r.cluster == 7) {
        want[r.label.expect("labelled")] += 1;
    }
    assert_eq!(grid[0].labels, want);
    assert_eq!(grid[0].labels.iter().sum::<usize>(), 20);
    let img = image::open(&png).expect("a PNG").to_rgb8();
    assert_eq!(img.height(), 24 + 2 * (48 + 6), "one row per cluster");
    assert!(cluster_grid(&assignments, &data, &png, 0, 5).is_err());
}
