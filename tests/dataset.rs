//! Pre-tokenized datasets: exact round trips, canvases rebuilt from codes, and clear errors for files
//! that are truncated, foreign, of another version, made with another tokenizer, or never finished.

use nvg::dataset::{Dataset, DatasetHeader, DatasetWriter, HEADER_SIZE, Record, rebuild};
use nvg::structure_map::ChildOrder;
use nvg::tokenizer::Tokenizer;
use nvg_testkit::Fixtures;
use std::path::{Path, PathBuf};

fn temp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("nvg-dataset-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The fixture images tokenized (2 records) and the tokenizer.
fn tokenized() -> (Tokenizer, Vec<Record>, nvg::tokenizer::Tokens) {
    let fx = Fixtures::open();
    let io = fx.file("tokenizer_io.safetensors");
    let tok = Tokenizer::load(&fx.path("tokenizer.safetensors"), io.get("encoder_f").dims()[2]).unwrap();
    let tokens = tok.tokenize(&io.get("encoder_f")).unwrap();
    let stages = tok.grid().stages();
    let records = (0..2)
        .map(|i| Record {
            class: 3 + i,
            leaf_labels: tokens.labels[i][stages - 1].clone(),
            codes: tokens
                .quantized
                .codes
                .iter()
                .enumerate()
                .map(|(s, c)| c.to_i64_vec().unwrap()[i << s..(i + 1) << s].to_vec())
                .collect(),
        })
        .collect();
    (tok, records, tokens)
}

fn header(tok: &Tokenizer) -> DatasetHeader {
    let g = tok.grid();
    DatasetHeader {
        grid_side: g.side(),
        stages: g.stages(),
        codebook_size: tok.config.codebook_size,
        num_classes: 10,
        count: 0,
        tokenizer_hash: tok.hash,
        child_order: ChildOrder::Merge,
    }
}

fn write(path: &Path, tok: &Tokenizer, records: &[Record]) {
    write_with(path, header(tok), records)
}

fn write_with(path: &Path, header: DatasetHeader, records: &[Record]) {
    let mut w = DatasetWriter::create(path, header).unwrap();
    for r in records {
        w.push(r).unwrap();
    }
    w.finish().unwrap();
}

fn open_err(path: &Path, hash: Option<u64>) -> String {
    match Dataset::open(path, hash) {
        Ok(_) => panic!("{} opened but should not", path.display()),
        Err(e) => format!("{e:#}"),
    }
}

#[test]
fn records_round_trip_exactly_and_canvases_rebuild_bit_for_bit() {
    let (tok, records, tokens) = tokenized();
    let dir = temp("roundtrip");
    let path = dir.join("d.nvgtok");
    write(&path, &tok, &records);
    let ds = Dataset::open(&path, Some(tok.hash)).unwrap();
    assert_eq!(ds.len(), 2);
    assert_eq!(
        ds.header.record_size(),
        1288,
        "16x16 grid: class + 256 u8 labels + 511 u16 codes, padded to 8"
    );
    let back: Vec<Record> = (0..2).map(|i| ds.record(i).unwrap()).collect();
    assert_eq!(back, records);
    for (s, want) in tokens.labels[1].iter().enumerate() {
        assert_eq!(&back[1].labels(s), want, "stage {s} labels from the leaf labels");
    }
    let rebuilt = rebuild(&back, &tok.quantizer).unwrap();
    let q = &tokens.quantized;
    assert_eq!(
        rebuilt.canvases.to_f32_vec().unwrap(),
        q.canvases.to_f32_vec().unwrap(),
        "canvases"
    );
    assert_eq!(
        rebuilt.target.to_f32_vec().unwrap(),
        q.latent.to_f32_vec().unwrap(),
        "target latent"
    );
    let per_token: Vec<&nvg_engine::Tensor> = q.codes_per_token.iter().collect();
    assert_eq!(
        rebuilt.codes_per_token.to_i64_vec().unwrap(),
        nvg_engine::Tensor::stack(&per_token, 1).unwrap().to_i64_vec().unwrap()
    );
    assert_eq!(rebuilt.classes, vec![3, 4]);
    assert!(ds.record(2).is_err());
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn damaged_foreign_and_mismatched_files_are_refused_with_the_reason() {
    let (tok, records, _) = tokenized();
    let dir = temp("damaged");
    let good = dir.join("good.nvgtok");
    write(&good, &tok, &records);
    let bytes = std::fs::read(&good).unwrap();
    let variant = |name: &str, f: &dyn Fn(&mut Vec<u8>)| {
        let mut b = bytes.clone();
        f(&mut b);
        let p = dir.join(name);
        std::fs::write(&p, b).unwrap();
        p
    };
    let truncated = variant("truncated.nvgtok", &|b| b.truncate(b.len() - 100));
    assert!(open_err(&truncated, None).contains("truncated"));
    // A record count whose byte size overflows (a corrupt header, not a truncated body).
    let huge = variant("huge.nvgtok", &|b| b[40..48].copy_from_slice(&u64::MAX.to_le_bytes()));
    assert!(open_err(&huge, None).contains("impossibly large"));
    // A class count or grid side that would size tables beyond any memory (damaged header fields).
    let classes = variant("classes.nvgtok", &|b| {
        b[56..60].copy_from_slice(&u32::MAX.to_le_bytes())
    });
    assert!(open_err(&classes, None).contains("4294967295 classes is more than"));
    let side = variant("side.nvgtok", &|b| {
        b[16..20].copy_from_slice(&(1u32 << 31).to_le_bytes())
    });
    assert!(open_err(&side, None).contains("larger than the 64×64"));
    // The writer refuses a class count no reader would open, before it creates anything.
    for classes in [0, nvg::dataset::MAX_CLASSES + 1] {
        let too_many = dir.join(format!("classes-{classes}.nvgtok"));
        let e = DatasetWriter::create(
            &too_many,
            DatasetHeader {
                num_classes: classes,
                ..header(&tok)
            },
        )
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
        assert!(e.contains("a dataset holds 1 to 1048576 classes"), "{classes}: {e}");
        assert!(
            std::fs::read_dir(&dir)
                .unwrap()
                .all(|f| !f.unwrap().file_name().to_string_lossy().contains("classes-"))
        );
    }
    let tiny = variant("tiny.nvgtok", &|b| b.truncate(20));
    assert!(open_err(&tiny, None).contains("too short"));
    let magic = variant("magic.nvgtok", &|b| b[0] = b'X');
    assert!(open_err(&magic, None).contains("magic"));
    let version = variant("version.nvgtok", &|b| b[8] = 99);
    assert!(open_err(&version, None).contains("version 99"));
    let unfinished = variant("unfinished.nvgtok", &|b| b[60] = 0);
    assert!(open_err(&unfinished, None).contains("did not finish"));
    let newer = variant("newer.nvgtok", &|b| b[60] |= 4);
    let msg = open_err(&newer, None);
    assert!(msg.contains("flags") && msg.contains("newer"), "{msg}");
    let msg = open_err(&good, Some(tok.hash ^ 1));
    assert!(
        msg.contains("another tokenizer") && msg.contains("good.nvgtok"),
        "{msg}"
    );
    assert!(Dataset::open(&good, Some(tok.hash)).is_ok());
    assert_eq!(bytes.len(), HEADER_SIZE + 2 * 1288);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_writer_that_does_not_finish_leaves_no_file_behind() {
    let (tok, records, _) = tokenized();
    let dir = temp("unfinished");
    let path = dir.join("d.nvgtok");
    {
        let mut w = DatasetWriter::create(&path, header(&tok)).unwrap();
        w.push(&records[0]).unwrap();
        // A bad record is an error, not a panic, and does not corrupt the file.
        let mut bad = records[1].clone();
        bad.codes[3][0] = 1 << 20;
        assert!(w.push(&bad).unwrap_err().to_string().contains("code"));
        // Dropped without finish().
    }
    assert!(!path.exists());
    assert_eq!(
        std::fs::read_dir(&dir).unwrap().count(),
        0,
        "the partial file is removed"
    );
    std::fs::remove_dir_all(dir).unwrap();
}

/// The header records the child order: merge order (flag clear, as in files written before the flag
/// existed) and outside-first both read back as written.
#[test]
fn the_header_records_how_the_children_were_named() {
    let (tok, records, _) = tokenized();
    let dir = temp("child-order");
    for order in [ChildOrder::Merge, ChildOrder::OutsideFirst] {
        let path = dir.join(format!("{order:?}.nvgtok"));
        write_with(
            &path,
            DatasetHeader {
                child_order: order,
                ..header(&tok)
            },
            &records,
        );
        let bytes = std::fs::read(&path).unwrap();
        let flags = u32::from_le_bytes(bytes[60..64].try_into().unwrap());
        assert_eq!(flags, if order == ChildOrder::Merge { 1 } else { 3 }, "{order:?}");
        assert_eq!(Dataset::open(&path, None).unwrap().header.child_order, order);
    }
    std::fs::remove_dir_all(dir).unwrap();
}
