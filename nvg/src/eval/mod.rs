//! Quality measurement of generated images (docs/evaluation.md): a small classifier trained with the
//! engine on the real images of a dataset (`classifier`), whose predictions give the accuracy of the
//! intended class and whose pooled features give a Fréchet distance between real and generated images
//! (`frechet`). `nvg eval` (tools/src/eval.rs) drives both.
//!
//! | file | what |
//! |---|---|
//! | `classifier.rs` | the CNN (conv / group norm / SiLU, mean pool, linear head), its initialisation, training (AdamW, weighted cross-entropy, seeded order and translation augmentation), safetensors save/load |
//! | `frechet.rs` | feature mean and covariance (f64), a Jacobi eigen-solver, the Fréchet distance |
//! | `mod.rs` | per-class accuracy of predictions against intended classes |

pub mod classifier;
pub mod frechet;

pub use classifier::{Classifier, ClassifierConfig, ClassifierTrainSettings, ClassifierTrainer, Embedding};
pub use frechet::{FeatureStats, FrechetDistance, frechet_distance};

/// Right and total predictions per intended class.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccuracyReport {
    /// `correct[c]`: images of intended class `c` predicted as `c`.
    pub correct: Vec<usize>,
    /// `total[c]`: images of intended class `c`.
    pub total: Vec<usize>,
    /// `confusion[c][p]`: images of intended class `c` predicted as `p`.
    pub confusion: Vec<Vec<usize>>,
}

impl AccuracyReport {
    /// Counts `predicted` against `intended` (same length; ids below `num_classes`).
    pub fn new(predicted: &[usize], intended: &[usize], num_classes: usize) -> anyhow::Result<AccuracyReport> {
        anyhow::ensure!(
            predicted.len() == intended.len(),
            "{} predictions for {} images",
            predicted.len(),
            intended.len()
        );
        let mut confusion = vec![vec![0usize; num_classes]; num_classes];
        for (&p, &y) in predicted.iter().zip(intended) {
            anyhow::ensure!(
                p < num_classes && y < num_classes,
                "class id {} is not below {num_classes}",
                p.max(y)
            );
            confusion[y][p] += 1;
        }
        Ok(AccuracyReport {
            correct: (0..num_classes).map(|c| confusion[c][c]).collect(),
            total: confusion.iter().map(|row| row.iter().sum()).collect(),
            confusion,
        })
    }

    pub fn images(&self) -> usize {
        self.total.iter().sum()
    }

    /// Fraction of all images predicted as their intended class.
    pub fn accuracy(&self) -> f64 {
        self.correct.iter().sum::<usize>() as f64 / self.images().max(1) as f64
    }

    /// Accuracy of class `c` (`None` without images of it).
    pub fn class_accuracy(&self, c: usize) -> Option<f64> {
        (self.total[c] > 0).then(|| self.correct[c] as f64 / self.total[c] as f64)
    }

    /// Mean of the per-class accuracies over the classes that have images ("balanced accuracy").
    pub fn balanced_accuracy(&self) -> f64 {
        let accs: Vec<f64> = (0..self.total.len()).filter_map(|c| self.class_accuracy(c)).collect();
        accs.iter().sum::<f64>() / accs.len().max(1) as f64
    }
}
