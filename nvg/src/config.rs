//! Model geometry: the latent grid and everything derived from it (stages, clusters, structure bits,
//! RoPE axes), and the generator's widths and heads. Every size the model uses comes from here.

use anyhow::{Result, bail};

/// Head width of every attention head (RoPE covers exactly these dims).
pub const HEAD_DIM: usize = 64;
/// The largest latent grid side: 64×64 = 4,096 tokens, 13 stages (4× the official side). The clustering
/// holds every token pair of an image, so larger grids exhaust memory; a huge `--resolution` or a corrupt
/// header is refused by name instead.
pub const MAX_GRID_SIDE: usize = 64;
/// The deepest generator `depth=N` builds (d48: width 3072, about 8.5 G parameters). Deeper ones would not
/// fit any machine we run on, and their sizes would overflow long before: refused by name instead.
pub const MAX_DEPTH: usize = 48;
/// RoPE base frequency.
pub const ROPE_THETA: f32 = 10_000.0;
/// Width of the token-type RoPE axis (axis 0).
const ROPE_TYPE_AXIS: usize = 8;

/// The square latent grid NVG works on (16×16 for 256-pixel images with an f16 tokenizer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grid {
    side: usize,
}

impl Grid {
    /// A `side × side` grid; `side` must be a power of two from 2 to `MAX_GRID_SIDE`.
    pub fn new(side: usize) -> Result<Grid> {
        if side < 2 || !side.is_power_of_two() {
            bail!("the latent grid side must be a power of two >= 2, got {side}");
        }
        if side > MAX_GRID_SIDE {
            bail!(
                "a {side}×{side} latent grid is larger than the {MAX_GRID_SIDE}×{MAX_GRID_SIDE} this implementation \
                 supports (the official models use 16×16; clustering one image of a 64×64 grid already takes 200 MB)"
            );
        }
        Ok(Grid { side })
    }

    /// The official 16×16 grid.
    pub fn official() -> Grid {
        Grid { side: 16 }
    }

    pub fn side(&self) -> usize {
        self.side
    }

    /// Latent tokens (grid cells), `side²`.
    pub fn tokens(&self) -> usize {
        self.side * self.side
    }

    /// Structure bits per token: the depth of the cluster tree, log2(tokens) (8 for 16×16).
    pub fn bits(&self) -> usize {
        self.tokens().trailing_zeros() as usize
    }

    /// Granularity stages, `bits + 1` (9 for 16×16): stage s has 2^s clusters.
    pub fn stages(&self) -> usize {
        self.bits() + 1
    }

    /// Clusters (unique tokens) at stage `s`.
    pub fn clusters(&self, stage: usize) -> usize {
        1 << stage
    }

    /// Tokens in each cluster of stage `s`.
    pub fn cluster_size(&self, stage: usize) -> usize {
        self.tokens() >> stage
    }

    /// Stages followed by a learned structure step (the flow predicts bit s): all but the last two.
    /// The second-to-last split is random (from noise) and the last stage has no split.
    pub fn flow_stages(&self) -> usize {
        self.stages() - 2
    }

    /// RoPE axis widths for a head: token type, one pair per structure bit, then row and column
    /// sharing what is left (`[8, 2×8, 20, 20]` for 16×16 and 64-wide heads).
    pub fn rope_axes(&self) -> Vec<usize> {
        let rest = HEAD_DIM - ROPE_TYPE_AXIS - 2 * self.bits();
        let mut axes = vec![ROPE_TYPE_AXIS];
        axes.extend(std::iter::repeat_n(2, self.bits()));
        axes.extend([rest / 2, rest / 2]);
        axes
    }

    /// Row and column of token `l` (raster order).
    pub fn row_col(&self, l: usize) -> (usize, usize) {
        (l / self.side, l % self.side)
    }
}

/// Sizes of the NVG generator (content and structure transformers).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GeneratorConfig {
    /// Blocks in each of the two transformers.
    pub depth: usize,
    /// Content width, 64·depth.
    pub width: usize,
    /// Content heads (head width 64).
    pub heads: usize,
    /// Structure width, width / 2.
    pub structure_width: usize,
    /// Structure heads, depth / 2.
    pub structure_heads: usize,
    /// MLP hidden width = mlp_ratio · width.
    pub mlp_ratio: usize,
    /// Latent channels of a token (the tokenizer's code dimension).
    pub latent_channels: usize,
    /// Codebook size.
    pub vocab_size: usize,
    /// Number of classes; the null (unconditional) class is this number.
    pub num_classes: usize,
    pub grid: Grid,
    /// Learned absolute position embeddings (`content_pos_embed` `[1, T, h]`, `structure_pos_embed`
    /// `[1, T, hs]`) added to the image tokens of both branches. Not in the official models (off for
    /// them); an option for our own, because the official branches see a token's position only through
    /// RoPE-relative attention, which makes the structure flow slow to learn position-dependent splits
    /// (docs/emoji-demo.md).
    pub position_embedding: bool,
}

impl GeneratorConfig {
    /// The sizes in words, for errors: "a depth-4 generator on a 8×8 grid with 1024 codes × 32 channels
    /// and 9 classes".
    pub fn describe(&self) -> String {
        format!(
            "a depth-{} generator on a {}×{} grid with {} codes × {} channels and {} classes",
            self.depth,
            self.grid.side(),
            self.grid.side(),
            self.vocab_size,
            self.latent_channels,
            self.num_classes
        )
    }

    /// The official architecture at any even depth: width 64·depth, depth heads; the structure branch
    /// has half the width and half the heads.
    pub fn from_depth(depth: usize) -> Result<GeneratorConfig> {
        if depth < 2 || !depth.is_multiple_of(2) {
            bail!("depth must be even and >= 2 (the structure branch has depth/2 heads of width 64), got {depth}");
        }
        if depth > MAX_DEPTH {
            bail!(
                "depth {depth} is more than {MAX_DEPTH} (twice the largest official model, d24: 1.07 G parameters; \
                 depth {depth} would need width {})",
                depth.saturating_mul(HEAD_DIM)
            );
        }
        Ok(GeneratorConfig {
            depth,
            width: HEAD_DIM * depth,
            heads: depth,
            structure_width: HEAD_DIM * depth / 2,
            structure_heads: depth / 2,
            mlp_ratio: 4,
            latent_channels: 32,
            vocab_size: 4096,
            num_classes: 1000,
            grid: Grid::official(),
            position_embedding: false,
        })
    }

    /// An official preset: `d16`, `d20` or `d24`, or `depth=N`.
    pub fn preset(name: &str) -> Result<GeneratorConfig> {
        let depth = match name {
            "d16" => 16,
            "d20" => 20,
            "d24" => 24,
            other => match other.strip_prefix("depth=").map(str::parse::<usize>) {
                Some(Ok(d)) => d,
                _ => bail!("unknown generator config `{other}` (expected d16, d20, d24 or depth=N)"),
            },
        };
        GeneratorConfig::from_depth(depth)
    }

    /// The class id that means "no class" (used for classifier-free guidance).
    pub fn null_class(&self) -> usize {
        self.num_classes
    }

    /// Names and shapes of the position tables (`position_embedding`): content's, then structure's.
    pub fn position_tables(&self) -> [(&'static str, [usize; 3]); 2] {
        let t = self.grid.tokens();
        [
            ("content_pos_embed", [1, t, self.width]),
            ("structure_pos_embed", [1, t, self.structure_width]),
        ]
    }

    /// MLP hidden width of a content block.
    pub fn mlp_width(&self) -> usize {
        self.mlp_ratio * self.width
    }

    /// Parameters of the inference model (content + structure transformers).
    pub fn parameter_count(&self) -> usize {
        let block = |w: usize| 15 * w * w + 11 * w + 2 * HEAD_DIM;
        let (h, hs, c, v, t) = (
            self.width,
            self.structure_width,
            self.latent_channels,
            self.vocab_size,
            self.grid.tokens(),
        );
        let (stages, bits, classes) = (self.grid.stages(), self.grid.bits(), self.num_classes + 1);
        let content = t * c
            + (c * h + h)
            + classes * h
            + stages * h
            + self.depth * block(h)
            + (2 * h * h + 2 * h)
            + (c * h + c)
            + (v * c + v);
        let structure = (bits * hs + hs)
            + classes * hs
            + (c * hs + hs)
            + self.grid.flow_stages() * hs
            + (64 * hs + hs + hs * hs + hs)
            + self.depth * block(hs)
            + (2 * hs * hs + 2 * hs)
            + (bits * hs + bits);
        let positions = if self.position_embedding { t * (h + hs) } else { 0 };
        content + structure + positions
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn official_grid_has_nine_stages_eight_bits_and_the_eleven_rope_axes() {
        let g = Grid::official();
        assert_eq!((g.tokens(), g.bits(), g.stages(), g.flow_stages()), (256, 8, 9, 7));
        assert_eq!(g.rope_axes(), vec![8, 2, 2, 2, 2, 2, 2, 2, 2, 20, 20]);
        assert_eq!(g.rope_axes().iter().sum::<usize>(), HEAD_DIM);
        assert_eq!((g.clusters(3), g.cluster_size(3)), (8, 32));
        let small = Grid::new(8).unwrap();
        assert_eq!((small.tokens(), small.stages()), (64, 7));
        assert_eq!(small.rope_axes().iter().sum::<usize>(), HEAD_DIM);
        assert!(Grid::new(12).is_err());
        let largest = Grid::new(MAX_GRID_SIDE).unwrap();
        assert_eq!((largest.tokens(), largest.stages()), (4096, 13));
        assert_eq!(largest.rope_axes().iter().sum::<usize>(), HEAD_DIM);
        let e = Grid::new(2 * MAX_GRID_SIDE).unwrap_err().to_string();
        assert!(e.contains("larger than the 64×64"), "{e}");
    }

    #[test]
    fn presets_match_the_spec_parameter_counts() {
        // NVG-SPEC §3.1: NVGformer without projector.
        for (name, params) in [("d16", 319_553_576), ("d20", 621_575_720), ("d24", 1_071_448_104)] {
            assert_eq!(
                GeneratorConfig::preset(name).unwrap().parameter_count(),
                params,
                "{name}"
            );
        }
        let d16 = GeneratorConfig::preset("d16").unwrap();
        assert_eq!(
            (d16.width, d16.heads, d16.structure_width, d16.structure_heads),
            (1024, 16, 512, 8)
        );
        assert!(GeneratorConfig::preset("depth=3").is_err());
        assert!(GeneratorConfig::preset("depth=48").is_ok());
        for huge in ["depth=50", "depth=1000000", "depth=18446744073709551614"] {
            let e = GeneratorConfig::preset(huge).unwrap_err().to_string();
            assert!(e.contains("is more than 48"), "{huge}: {e}");
        }
        assert!(GeneratorConfig::preset("d17").is_err());
    }
}
