//! Post-processing exactly as the Obico server: keep boxes with confidence strictly above
//! 0.08, greedy NMS at IoU 0.45 by descending confidence, then boxes in pixels of the
//! original frame as `[xc, yc, w, h]`.
//!
//! One difference, on purpose: the height. For a W x H frame the server's ONNX path
//! (`ml_api/lib/backend_onnx.py`, `post_processing`, `box_x1x1x2y2_to_xcycwh_scaled`)
//! computes `h = W * (y2 - y1)`, scaling by the frame's width (an upstream bug: 16/9 too
//! tall on 16:9 frames); here `h = H * (y2 - y1)`, so that boxes drawn fit the frame. The
//! server's value is this `h * W / H`. Confidences, NMS (on normalised boxes, before any
//! scaling) and so `p` are unaffected.
//!
//! Arithmetic is float32, as the server's numpy arrays are. Confidence ties are ordered
//! with the higher index first (a stable arg-sort reversed); a tie can only change which
//! of two equal-confidence boxes is kept, never `p`.

use serde::{Deserialize, Serialize};

/// Boxes at or below this confidence are dropped.
pub const CONF_THRESHOLD: f32 = 0.08;
/// A box whose IoU with a kept box exceeds this is suppressed.
pub const NMS_THRESHOLD: f32 = 0.45;
/// The detector's one class.
pub const LABEL: &str = "failure";

/// One detection, as the server reports it: `("failure", conf, [xc, yc, w, h])`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Detection {
    pub confidence: f64,
    /// Centre x, centre y, width, height, in pixels of the original frame (the height
    /// scaled by the frame's height; the server scales it by the width, see the module).
    pub bbox: [f64; 4],
}

/// `boxes`: n x 4 normalised `x1, y1, x2, y2`; `confs`: n confidences.
/// Returns the kept detections in descending confidence.
pub fn postprocess(boxes: &[f32], confs: &[f32], frame_w: usize, frame_h: usize) -> Vec<Detection> {
    let n = confs.len().min(boxes.len() / 4);
    let mut order: Vec<usize> = (0..n).filter(|&i| confs[i] > CONF_THRESHOLD).collect();
    // Descending confidence; ties: higher index first. NaN confidences never pass the
    // threshold above, so total_cmp sees only numbers.
    order.sort_by(|&a, &b| confs[b].total_cmp(&confs[a]).then(b.cmp(&a)));
    let b = |i: usize| &boxes[i * 4..i * 4 + 4];

    // The candidates' coordinates and areas in confidence order, one array each, so the
    // suppression pass below runs over contiguous floats (and vectorises).
    let m = order.len();
    let [mut x1, mut y1, mut x2, mut y2, mut area] = std::array::from_fn(|_| Vec::with_capacity(m));
    for &i in &order {
        let r = b(i);
        x1.push(r[0]);
        y1.push(r[1]);
        x2.push(r[2]);
        y2.push(r[3]);
        area.push((r[2] - r[0]) * (r[3] - r[1]));
    }

    let mut keep = Vec::new();
    let mut suppressed = vec![false; m];
    for k in 0..m {
        if suppressed[k] {
            continue;
        }
        keep.push(order[k]);
        let (sx1, sy1, sx2, sy2, sa) = (x1[k], y1[k], x2[k], y2[k], area[k]);
        let rest = k + 1..m;
        let others = x1[rest.clone()].iter().zip(&y1[rest.clone()]).zip(&x2[rest.clone()]).zip(&y2[rest.clone()]).zip(&area[rest.clone()]);
        for (s, ((((&ox1, &oy1), &ox2), &oy2), &oa)) in suppressed[rest].iter_mut().zip(others) {
            let w = (sx2.min(ox2) - sx1.max(ox1)).max(0.0);
            let h = (sy2.min(oy2) - sy1.max(oy1)).max(0.0);
            let inter = w * h;
            let iou = inter / (sa + oa - inter);
            // numpy keeps `over <= thresh`: a NaN IoU (0/0) suppresses, as there. A box
            // already suppressed stays so.
            #[allow(clippy::neg_cmp_op_on_partial_ord)]
            let over = !(iou <= NMS_THRESHOLD);
            *s |= over;
        }
    }

    let (fw, fh) = (frame_w as f64, frame_h as f64);
    keep.into_iter()
        .map(|i| {
            let r = b(i);
            let (x1, y1, x2, y2) = (r[0] as f64, r[1] as f64, r[2] as f64, r[3] as f64);
            Detection {
                confidence: confs[i] as f64,
                bbox: [0.5 * fw * (x1 + x2), 0.5 * fh * (y1 + y2), fw * (x2 - x1), fh * (y2 - y1)],
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threshold_is_strict() {
        let boxes = [0.0, 0.0, 0.1, 0.1, 0.5, 0.5, 0.6, 0.6];
        let d = postprocess(&boxes, &[0.08, 0.0800001], 100, 100);
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].confidence, 0.0800001f32 as f64);
    }

    #[test]
    fn boxes_are_in_original_frame_pixels() {
        let d = postprocess(&[0.25, 0.5, 0.75, 1.0], &[0.9], 1280, 720);
        // The height is half the frame's height (the server would say 640: half its width).
        assert_eq!(d[0].bbox, [640.0, 540.0, 640.0, 360.0]);
    }

    #[test]
    fn overlapping_lower_box_is_suppressed_and_disjoint_kept() {
        let boxes = [
            0.0, 0.0, 0.5, 0.5, // a
            0.05, 0.05, 0.5, 0.5, // b: IoU with a = 0.81
            0.6, 0.6, 0.9, 0.9, // c: disjoint
        ];
        let d = postprocess(&boxes, &[0.5, 0.7, 0.3], 100, 100);
        let confs: Vec<f64> = d.iter().map(|d| d.confidence).collect();
        assert_eq!(confs, vec![0.7f32 as f64, 0.3f32 as f64]);
    }

    #[test]
    fn iou_exactly_at_threshold_is_kept_and_just_above_suppressed() {
        // b inside a unit box a: IoU = area(b) = h.
        let at = [0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 1.0, NMS_THRESHOLD];
        assert_eq!(postprocess(&at, &[0.9, 0.8], 10, 10).len(), 2);
        let above = [0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 1.0, 0.4500001];
        assert_eq!(postprocess(&above, &[0.9, 0.8], 10, 10).len(), 1);
    }

    #[test]
    fn touching_boxes_are_kept_identical_suppressed() {
        let boxes = [0.0, 0.0, 0.5, 0.5, 0.5, 0.0, 1.0, 0.5, 0.0, 0.0, 0.5, 0.5];
        let d = postprocess(&boxes, &[0.9, 0.8, 0.7], 10, 10);
        assert_eq!(d.len(), 2);
    }

    #[test]
    fn ties_keep_the_higher_index_and_p_is_unchanged() {
        let boxes = [0.0, 0.0, 0.5, 0.5, 0.01, 0.01, 0.5, 0.5];
        let d = postprocess(&boxes, &[0.6, 0.6], 100, 100);
        assert_eq!(d.len(), 1);
        assert!((d[0].bbox[0] - 25.5).abs() < 1e-4, "second box kept: {:?}", d[0]);
    }

    #[test]
    fn zero_area_boxes_do_not_panic_and_suppress_like_numpy() {
        // Two degenerate boxes at the same point: 0/0 IoU suppresses the second.
        let boxes = [0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.0, 0.0, 1.0, 1.0];
        let d = postprocess(&boxes, &[0.9, 0.8, 0.2], 10, 10);
        let confs: Vec<f64> = d.iter().map(|d| d.confidence).collect();
        assert_eq!(confs, vec![0.9f32 as f64, 0.2f32 as f64]);
    }

    /// The suppression written plainly, box by box, as numpy's loop reads.
    fn reference_keep(boxes: &[f32], confs: &[f32]) -> Vec<usize> {
        let n = confs.len().min(boxes.len() / 4);
        let mut order: Vec<usize> = (0..n).filter(|&i| confs[i] > CONF_THRESHOLD).collect();
        order.sort_by(|&a, &b| confs[b].total_cmp(&confs[a]).then(b.cmp(&a)));
        let b = |i: usize| &boxes[i * 4..i * 4 + 4];
        let area = |i: usize| (b(i)[2] - b(i)[0]) * (b(i)[3] - b(i)[1]);
        let mut keep = Vec::new();
        while let Some((&first, rest)) = order.split_first() {
            keep.push(first);
            let s = b(first);
            order = rest
                .iter()
                .copied()
                .filter(|&o| {
                    let r = b(o);
                    let w = (s[2].min(r[2]) - s[0].max(r[0])).max(0.0);
                    let h = (s[3].min(r[3]) - s[1].max(r[1])).max(0.0);
                    let inter = w * h;
                    inter / (area(first) + area(o) - inter) <= NMS_THRESHOLD
                })
                .collect();
        }
        keep
    }

    proptest::proptest! {
        #[test]
        fn suppression_matches_the_plain_loop(
            raw in proptest::collection::vec((0f32..1.0, 0f32..1.0, 0f32..0.6, 0f32..0.6, 0f32..1.0), 0..200),
        ) {
            let mut boxes = Vec::new();
            let mut confs = Vec::new();
            for (x, y, w, h, c) in raw {
                boxes.extend_from_slice(&[x, y, x + w, y + h]);
                // Coarse confidences make ties common.
                confs.push((c * 20.0).round() / 20.0);
            }
            // Each kept box as a detection on its own (a single box is always kept).
            let expected: Vec<Detection> = reference_keep(&boxes, &confs)
                .into_iter()
                .flat_map(|i| postprocess(&boxes[i * 4..i * 4 + 4], &confs[i..=i], 640, 480))
                .collect();
            proptest::prop_assert_eq!(postprocess(&boxes, &confs, 640, 480), expected);
        }
    }

    #[test]
    fn nan_and_short_inputs_are_survived() {
        let d = postprocess(&[0.0, 0.0, 1.0, 1.0, f32::NAN, 0.0, 1.0, 1.0], &[f32::NAN, 0.5, 0.9], 10, 10);
        assert_eq!(d.len(), 1);
        assert!(postprocess(&[], &[0.9], 10, 10).is_empty());
    }
}
