//! The demo world's visual grammar: what `synth --render` draws, so that a region's triplet can be
//! read from its crop's pixels alone.
//!
//! - Every SIMAT subject is a filled **shape** in its own **colour** with a dark outline ("dog"
//!   and "cat" differ in both); every object that SIMAT regions are planted with is a larger
//!   shape in a colour and a **texture** (stripes, checks, dots, …). The assignment is by rank in
//!   fixed lists, so each of the 15 subjects and 40 objects has a look no other one has; any other
//!   name gets a look from its hash and is drawn as an outline with its name, as clutter.
//! - Every SIMAT relation is an **arrangement**: where the subject sits against the object (on
//!   top of it, inside it, left of it, right of it, under it) and a black **badge** on the
//!   subject's corner (triangle, square, disc, cross). Five placements × four badges give each of
//!   the 20 relations its own look.
//!
//! Nothing here reads a label: a model that tells the triplets apart has learned the pixels.

use image::{Rgb, RgbImage};
use rand::RngExt;
use rand_chacha::ChaCha8Rng;

/// SIMAT's subjects, most frequent first (as in the official release).
pub const SUBJECTS: &[&str] = &[
    "man", "woman", "cat", "dog", "people", "boy", "girl", "bear", "cow", "bird", "giraffe",
    "sheep", "horse", "zebra", "elephant",
];

/// SIMAT's relations, most frequent first.
pub const RELATIONS: &[&str] = &[
    "sitting on a",
    "laying in",
    "playing with",
    "leaning on",
    "running in",
    "swinging",
    "touching",
    "eating from",
    "sleeping on",
    "jumping on",
    "entering",
    "chasing",
    "balancing on",
    "grabbing",
    "waiting at",
    "biting",
    "licking",
    "sniffing",
    "selling",
    "leaving",
];

/// Objects that SIMAT regions are planted with, most frequent first.
pub const PLANT_OBJECTS: &[&str] = &[
    "bench",
    "table",
    "chair",
    "frisbee",
    "grass",
    "bed",
    "couch",
    "floor",
    "field",
    "beach",
    "computer",
    "water",
    "motorcycle",
    "surfboard",
    "snow",
    "horse",
    "sand",
    "bus",
    "sofa",
    "desk",
    "boat",
    "skateboard",
    "ball",
    "blanket",
    "fence",
    "tree",
    "car",
    "wall",
    "dirt",
    "rock",
    "pillow",
    "sidewalk",
    "train",
    "bike",
    "carpet",
    "counter",
    "rug",
    "kite",
    "pizza",
    "hay",
];

/// Twelve well-separated colours.
const PALETTE: [[u8; 3]; 12] = [
    [220, 40, 40],
    [240, 140, 20],
    [225, 205, 25],
    [140, 210, 40],
    [30, 140, 60],
    [20, 170, 160],
    [60, 195, 240],
    [40, 80, 220],
    [130, 60, 200],
    [220, 60, 180],
    [130, 80, 40],
    [70, 70, 70],
];

/// An icon's outline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// A disc.
    Circle,
    /// A square.
    Square,
    /// A triangle pointing up.
    Triangle,
    /// A square on its corner.
    Diamond,
    /// A plus sign.
    Cross,
    /// A hexagon.
    Hexagon,
    /// A disc with a hole.
    Ring,
    /// A five-pointed star.
    Star,
}

const SHAPES: [Shape; 8] = [
    Shape::Circle,
    Shape::Square,
    Shape::Triangle,
    Shape::Diamond,
    Shape::Cross,
    Shape::Hexagon,
    Shape::Ring,
    Shape::Star,
];

/// An icon's fill.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Texture {
    /// One colour.
    Solid,
    /// Horizontal stripes.
    HorizontalStripes,
    /// Vertical stripes.
    VerticalStripes,
    /// A checkerboard.
    Checks,
    /// Pale dots.
    Dots,
    /// Diagonal stripes.
    Diagonal,
}

const OBJECT_TEXTURES: [Texture; 5] = [
    Texture::HorizontalStripes,
    Texture::VerticalStripes,
    Texture::Checks,
    Texture::Dots,
    Texture::Diagonal,
];

/// How a name is drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Look {
    /// A SIMAT subject or planted object: a filled shape.
    Icon {
        /// Its outline.
        shape: Shape,
        /// Its colour.
        colour: Rgb<u8>,
        /// Its fill.
        texture: Texture,
    },
    /// Anything else: a frame with the name in it.
    Clutter {
        /// The frame's and the name's colour.
        colour: Rgb<u8>,
    },
}

/// The look of an object name.
pub fn look(name: &str) -> Look {
    if let Some(i) = SUBJECTS.iter().position(|s| *s == name) {
        // (i mod 8, i mod 12) repeats only after 24 names: each subject is unique.
        return Look::Icon {
            shape: SHAPES[i % SHAPES.len()],
            colour: Rgb(PALETTE[i % PALETTE.len()]),
            texture: Texture::Solid,
        };
    }
    if let Some(j) = PLANT_OBJECTS.iter().position(|s| *s == name) {
        // (j mod 5, j mod 12) repeats only after 60 names; the shape varies too.
        return Look::Icon {
            shape: SHAPES[(j / 5) % SHAPES.len()],
            colour: Rgb(PALETTE[j % PALETTE.len()]),
            texture: OBJECT_TEXTURES[j % OBJECT_TEXTURES.len()],
        };
    }
    Look::Clutter {
        colour: clutter_colour(name),
    }
}

/// A mid-tone colour from a name's hash, for frames and names.
pub fn clutter_colour(name: &str) -> Rgb<u8> {
    let h = blake3::hash(name.as_bytes());
    let b = h.as_bytes();
    Rgb([40 + b[0] % 160, 40 + b[1] % 160, 40 + b[2] % 160])
}

/// Where a relation's subject sits against its object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// The subject stands on the object.
    OnTop,
    /// The subject is inside the object.
    Inside,
    /// The subject is left of the object.
    LeftOf,
    /// The subject is right of the object.
    RightOf,
    /// The subject is under the object.
    Under,
}

const PLACEMENTS: [Placement; 5] = [
    Placement::OnTop,
    Placement::Inside,
    Placement::LeftOf,
    Placement::RightOf,
    Placement::Under,
];

/// The badge on a relation's subject.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Badge {
    /// A triangle.
    Triangle,
    /// A square.
    Square,
    /// A disc.
    Disc,
    /// A plus sign.
    Cross,
}

const BADGES: [Badge; 4] = [Badge::Triangle, Badge::Square, Badge::Disc, Badge::Cross];

/// How a relation is drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RelationLook {
    /// Where the subject sits.
    pub placement: Placement,
    /// The badge on the subject.
    pub badge: Badge,
}

/// The look of a relation (by its canonical name; an unknown one by its hash).
pub fn relation_look(relation: &str) -> RelationLook {
    let r = RELATIONS
        .iter()
        .position(|r| *r == relation)
        .unwrap_or_else(|| blake3::hash(relation.as_bytes()).as_bytes()[0] as usize);
    RelationLook {
        placement: PLACEMENTS[r % PLACEMENTS.len()],
        badge: BADGES[(r / PLACEMENTS.len()) % BADGES.len()],
    }
}

/// A box `[x, y, w, h]` in pixels.
pub type Bbox = [i64; 4];

/// The object's and the subject's boxes of a planted relation in an image of `width × height`:
/// the object a quarter to a half of the image, the subject about two thirds of the object, placed
/// as the relation says (and kept inside the image).
pub fn place_pair(
    placement: Placement,
    width: i64,
    height: i64,
    rng: &mut ChaCha8Rng,
) -> (Bbox, Bbox) {
    let ow = rng.random_range(width / 4..=width * 2 / 5);
    let oh = rng.random_range(height / 4..=height * 2 / 5);
    let ox = rng.random_range(width / 6..=(width - ow - width / 6).max(width / 6));
    let oy = rng.random_range(height / 6..=(height - oh - height / 6).max(height / 6));
    let scale = rng.random_range(55..=80);
    let (mut sw, mut sh) = ((ow * scale / 100).max(24), (oh * scale / 100).max(24));
    let jitter_x = rng.random_range(-(ow / 8)..=ow / 8);
    let jitter_y = rng.random_range(-(oh / 8)..=oh / 8);
    let (sx, sy) = match placement {
        Placement::OnTop => (ox + (ow - sw) / 2 + jitter_x, oy - sh + sh / 5),
        Placement::Under => (ox + (ow - sw) / 2 + jitter_x, oy + oh - sh / 5),
        Placement::LeftOf => (ox - sw + sw / 6, oy + (oh - sh) / 2 + jitter_y),
        Placement::RightOf => (ox + ow - sw / 6, oy + (oh - sh) / 2 + jitter_y),
        Placement::Inside => {
            sw = sw.min(ow * 3 / 5);
            sh = sh.min(oh * 3 / 5);
            (ox + (ow - sw) / 2, oy + (oh - sh) / 2)
        }
    };
    let sx = sx.clamp(0, (width - sw).max(0));
    let sy = sy.clamp(0, (height - sh).max(0));
    ([ox, oy, ow, oh], [sx, sy, sw, sh])
}

fn inside(shape: Shape, u: f64, v: f64) -> bool {
    let r2 = u * u + v * v;
    match shape {
        Shape::Circle => r2 <= 1.0,
        Shape::Square => u.abs() <= 0.9 && v.abs() <= 0.9,
        Shape::Triangle => (-0.95..=0.95).contains(&v) && u.abs() <= (v + 0.95) / 1.9,
        Shape::Diamond => u.abs() + v.abs() <= 1.0,
        Shape::Cross => {
            (u.abs() <= 0.32 && v.abs() <= 0.95) || (v.abs() <= 0.32 && u.abs() <= 0.95)
        }
        Shape::Hexagon => v.abs() <= 0.87 && u.abs() + v.abs() / 3f64.sqrt() <= 1.0,
        Shape::Ring => (0.3..=1.0).contains(&r2),
        Shape::Star => {
            let t = v.atan2(u);
            let k = ((5.0 * t).cos() + 1.0) / 2.0;
            r2.sqrt() <= 0.45 + 0.55 * k * k
        }
    }
}

fn mix(a: Rgb<u8>, b: [u8; 3], t: f32) -> Rgb<u8> {
    let m = |x: u8, y: u8| (x as f32 * (1.0 - t) + y as f32 * t).round() as u8;
    Rgb([m(a[0], b[0]), m(a[1], b[1]), m(a[2], b[2])])
}

fn textured(texture: Texture, colour: Rgb<u8>, x: i64, y: i64) -> Rgb<u8> {
    let light = mix(colour, [255, 255, 255], 0.6);
    let on = match texture {
        Texture::Solid => true,
        Texture::HorizontalStripes => (y / 7) % 2 == 0,
        Texture::VerticalStripes => (x / 7) % 2 == 0,
        Texture::Checks => (x / 9 + y / 9) % 2 == 0,
        Texture::Dots => {
            let (dx, dy) = (x % 12 - 6, y % 12 - 6);
            dx * dx + dy * dy > 12
        }
        Texture::Diagonal => ((x + y) / 8) % 2 == 0,
    };
    if on {
        colour
    } else {
        light
    }
}

/// Fill `b` with `shape` (u, v in −1…1 across the box), each pixel coloured by `paint`; pixels near
/// the edge of the shape get `outline` when given.
fn fill(
    img: &mut RgbImage,
    b: Bbox,
    shape: Shape,
    outline: Option<Rgb<u8>>,
    paint: impl Fn(i64, i64) -> Rgb<u8>,
) {
    let (w, h) = (img.width() as i64, img.height() as i64);
    let [bx, by, bw, bh] = b;
    if bw <= 0 || bh <= 0 {
        return;
    }
    // The outline is the band between the shape and the shape shrunk by 3 pixels.
    let (su, sv) = (1.0 + 6.0 / bw as f64, 1.0 + 6.0 / bh as f64);
    for y in by.max(0)..(by + bh).min(h) {
        for x in bx.max(0)..(bx + bw).min(w) {
            let u = (2 * (x - bx) + 1) as f64 / bw as f64 - 1.0;
            let v = (2 * (y - by) + 1) as f64 / bh as f64 - 1.0;
            if !inside(shape, u, v) {
                continue;
            }
            let c = match outline {
                Some(o) if !inside(shape, u * su, v * sv) => o,
                _ => paint(x, y),
            };
            img.put_pixel(x as u32, y as u32, c);
        }
    }
}

/// Draw an object name's icon in its box (clutter names are left to the caller's frame).
pub fn draw_icon(img: &mut RgbImage, b: Bbox, name: &str) {
    if let Look::Icon {
        shape,
        colour,
        texture,
    } = look(name)
    {
        let outline = mix(colour, [0, 0, 0], 0.6);
        fill(img, b, shape, Some(outline), |x, y| {
            textured(texture, colour, x, y)
        });
    }
}

/// Draw a relation's badge on the subject's top-right corner.
pub fn draw_badge(img: &mut RgbImage, subject: Bbox, relation: RelationLook) {
    let side = (subject[2].min(subject[3]) / 3).clamp(14, 48);
    let b = [subject[0] + subject[2] - side, subject[1], side, side];
    let shape = match relation.badge {
        Badge::Triangle => Shape::Triangle,
        Badge::Square => Shape::Square,
        Badge::Disc => Shape::Circle,
        Badge::Cross => Shape::Cross,
    };
    fill(img, b, shape, Some(Rgb([255, 255, 255])), |_, _| {
        Rgb([15, 15, 15])
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn every_planted_name_and_relation_has_its_own_look() {
        let mut seen = std::collections::HashSet::new();
        let names: std::collections::BTreeSet<&str> =
            SUBJECTS.iter().chain(PLANT_OBJECTS).copied().collect();
        for name in names {
            let l = look(name);
            assert!(matches!(l, Look::Icon { .. }), "{name}");
            assert!(
                seen.insert(format!("{l:?}")),
                "{name} looks like another name"
            );
        }
        let mut seen = std::collections::HashSet::new();
        for r in RELATIONS {
            assert!(seen.insert(format!("{:?}", relation_look(r))), "{r}");
        }
        assert!(matches!(look("window"), Look::Clutter { .. }));
    }

    #[test]
    fn the_subject_sits_where_the_relation_says() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        for _ in 0..200 {
            for p in PLACEMENTS {
                let (o, s) = place_pair(p, 800, 600, &mut rng);
                for b in [o, s] {
                    assert!(b[0] >= 0 && b[1] >= 0 && b[0] + b[2] <= 800 && b[1] + b[3] <= 600);
                    assert!(b[2] >= 24 && b[3] >= 24, "{b:?}");
                }
                let (oc, sc) = (
                    (o[0] * 2 + o[2], o[1] * 2 + o[3]),
                    (s[0] * 2 + s[2], s[1] * 2 + s[3]),
                );
                match p {
                    Placement::OnTop => assert!(sc.1 < oc.1),
                    Placement::Under => assert!(sc.1 > oc.1),
                    Placement::LeftOf => assert!(sc.0 < oc.0),
                    Placement::RightOf => assert!(sc.0 > oc.0),
                    Placement::Inside => {
                        assert!(s[0] >= o[0] && s[1] >= o[1] && s[0] + s[2] <= o[0] + o[2])
                    }
                }
            }
        }
    }

    #[test]
    fn dog_and_cat_differ_in_pixels() {
        let draw = |name: &str| {
            let mut img = RgbImage::from_pixel(120, 120, Rgb([230, 230, 230]));
            draw_icon(&mut img, [10, 10, 100, 100], name);
            img
        };
        let (dog, cat) = (draw("dog"), draw("cat"));
        let differing = dog
            .pixels()
            .zip(cat.pixels())
            .filter(|(a, b)| a != b)
            .count();
        assert!(differing > 120 * 120 / 4, "{differing} pixels differ");
        // An icon covers a good part of its box.
        let painted = dog.pixels().filter(|p| **p != Rgb([230, 230, 230])).count();
        assert!(painted > 100 * 100 / 3, "{painted}");
    }
}
