//! Converting official PyTorch Lightning checkpoints: exact tensors, the right subset, and refusal of
//! anything that is not plain data — before anything could run.

use nvg::checkpoint::{ModelKind, TorchCheckpoint, convert};
use nvg_engine::io::safetensors::SafetensorsFile;
use nvg_testkit::Fixtures;
use std::path::{Path, PathBuf};

fn temp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("nvg-convert-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A minimal stored ZIP writer (CRCs are left zero: the reader under test does not need them).
fn write_zip(path: &Path, entries: &[(&str, &[u8])]) {
    let (mut out, mut central) = (Vec::new(), Vec::new());
    for (name, data) in entries {
        let offset = out.len() as u32;
        let le16 = |v: u16| v.to_le_bytes();
        let le32 = |v: u32| v.to_le_bytes();
        out.extend_from_slice(&le32(0x0403_4b50));
        out.extend_from_slice(&[20, 0, 0, 0, 0, 0, 0, 0, 0, 0]); // version, flags, method 0, time, date
        out.extend_from_slice(&le32(0)); // crc
        out.extend_from_slice(&le32(data.len() as u32));
        out.extend_from_slice(&le32(data.len() as u32));
        out.extend_from_slice(&le16(name.len() as u16));
        out.extend_from_slice(&le16(0));
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(data);
        central.extend_from_slice(&le32(0x0201_4b50));
        central.extend_from_slice(&[20, 0, 20, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        central.extend_from_slice(&le32(0));
        central.extend_from_slice(&le32(data.len() as u32));
        central.extend_from_slice(&le32(data.len() as u32));
        central.extend_from_slice(&le16(name.len() as u16));
        central.extend_from_slice(&[0; 8]); // extra, comment, disk, internal attrs
        central.extend_from_slice(&le32(0)); // external attrs
        central.extend_from_slice(&le32(offset));
        central.extend_from_slice(name.as_bytes());
    }
    let cd_offset = out.len() as u32;
    out.extend_from_slice(&central);
    out.extend_from_slice(&0x0605_4b50u32.to_le_bytes());
    out.extend_from_slice(&[0, 0, 0, 0]);
    out.extend_from_slice(&(entries.len() as u16).to_le_bytes());
    out.extend_from_slice(&(entries.len() as u16).to_le_bytes());
    out.extend_from_slice(&(central.len() as u32).to_le_bytes());
    out.extend_from_slice(&cd_offset.to_le_bytes());
    out.extend_from_slice(&[0, 0]);
    std::fs::write(path, out).unwrap();
}

fn assert_same_tensors(got: &std::collections::BTreeMap<String, nvg_engine::Tensor>, want: &Path) {
    let want = SafetensorsFile::open(want).unwrap();
    let want_names: Vec<&str> = want.names().collect();
    let got_names: Vec<&str> = got.keys().map(String::as_str).collect();
    assert_eq!(got_names, want_names, "tensor names");
    for (name, t) in got {
        let w = want.get(name).unwrap();
        assert_eq!(t.dims(), w.dims(), "{name}");
        assert_eq!(t.dtype(), w.dtype(), "{name}");
        assert_eq!(t.to_f32_vec().unwrap(), w.to_f32_vec().unwrap(), "{name}: values");
    }
}

#[test]
fn lightning_checkpoint_converts_to_the_exact_raw_and_ema_weights() {
    let fx = Fixtures::open();
    let ckpt = fx.path("generator_lightning.ckpt");
    let raw = convert(&ckpt, false).unwrap();
    assert_eq!(raw.kind, ModelKind::Generator);
    assert_same_tensors(&raw.tensors, &fx.path("generator.safetensors"));
    let ema = convert(&ckpt, true).unwrap();
    assert_same_tensors(&ema.tensors, &fx.path("generator_ema.safetensors"));
    // Dropped: the AE copy, DINOv2, the REPA projector, and the other weight set.
    for must_drop in fx.manifest["files"]["generator_lightning.ckpt"]["layout"]["must_be_ignored"]
        .as_object()
        .unwrap()
        .keys()
    {
        let bare = must_drop.trim_start_matches("nvgformer.");
        assert!(
            !raw.tensors.contains_key(must_drop.as_str()) && !raw.tensors.contains_key(bare),
            "{must_drop} kept"
        );
    }
    let total = TorchCheckpoint::open(&ckpt).unwrap().state_dict().unwrap().len();
    assert_eq!(raw.tensors.len() + raw.dropped, total);
}

#[test]
fn a_pickle_that_names_code_is_refused_before_anything_runs() {
    let dir = temp("evil");
    let marker = dir.join("ran");
    // pickle.dumps of an object whose __reduce__ is (os.system, ('touch <marker>',)).
    let cmd = format!("touch {}", marker.display());
    let mut pkl = b"\x80\x02cposix\nsystem\nq\x00X".to_vec();
    pkl.extend_from_slice(&(cmd.len() as u32).to_le_bytes());
    pkl.extend_from_slice(cmd.as_bytes());
    pkl.extend_from_slice(b"q\x01\x85q\x02Rq\x03.");
    let path = dir.join("evil.ckpt");
    write_zip(&path, &[("evil/data.pkl", &pkl), ("evil/version", b"3\n")]);
    let err = format!("{:#}", convert(&path, false).err().expect("refused"));
    assert!(
        err.contains("refusing global `posix.system`") && err.contains("evil.ckpt"),
        "{err}"
    );
    assert!(!marker.exists(), "the command ran");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn truncated_and_corrupt_checkpoints_are_errors_not_panics() {
    let fx = Fixtures::open();
    let bytes = std::fs::read(fx.path("generator_lightning.ckpt")).unwrap();
    let dir = temp("corrupt");
    let check = |name: &str, data: &[u8], needle: &str| {
        let p = dir.join(name);
        std::fs::write(&p, data).unwrap();
        let err = match convert(&p, false) {
            Ok(_) => panic!("{name} converted"),
            Err(e) => format!("{e:#}"),
        };
        assert!(err.contains(name) && err.contains(needle), "{name}: {err}");
    };
    for cut in [0, 10, 100, bytes.len() / 2, bytes.len() - 30] {
        check(&format!("cut{cut}.ckpt"), &bytes[..cut], "");
    }
    check(
        "garbage.ckpt",
        b"this is not a checkpoint at all, just some text",
        "ZIP",
    );
    // A corrupted pickle inside an intact archive: rewrite data.pkl with its opcode bytes scrambled.
    // data.pkl is the archive's first entry: its data follows the 30-byte local header, name and extra field.
    let le16 = |at: usize| u16::from_le_bytes([bytes[at], bytes[at + 1]]) as usize;
    let pkl_start = 30 + le16(26) + le16(28);
    let mut scrambled = bytes.clone();
    for b in &mut scrambled[pkl_start + 10..pkl_start + 40] {
        *b = 0xFE;
    }
    check("scrambled.ckpt", &scrambled, "pickle");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn tensor_entries_whose_sizes_overflow_are_errors_not_panics() {
    let fx = Fixtures::open();
    let ckpt = TorchCheckpoint::open(&fx.path("generator_lightning.ckpt")).unwrap();
    let (_, good) = ckpt
        .state_dict()
        .unwrap()
        .into_iter()
        .find(|(_, r)| r.size.len() == 2)
        .expect("a matrix");
    assert!(ckpt.load(&good).is_ok());
    // What a corrupt pickle could declare: each product or sum overflows a usize.
    let huge = usize::MAX / 2 + 1;
    let corrupt = [
        ("storage size", {
            let mut r = good.clone();
            r.storage_numel = huge;
            r
        }),
        ("shape", {
            let mut r = good.clone();
            r.size = vec![huge, 4];
            r
        }),
        ("stride", {
            let mut r = good.clone();
            r.stride = vec![huge, 1];
            r
        }),
        ("offset", {
            let mut r = good.clone();
            r.offset = usize::MAX;
            r
        }),
    ];
    for (what, r) in corrupt {
        let err = format!("{:#}", ckpt.load(&r).err().unwrap_or_else(|| panic!("{what}: loaded")));
        let names_it = err.contains(&format!("`{}`", r.key));
        assert!(
            names_it && (err.contains("overflow") || err.contains("reaches element")),
            "{what}: {err}"
        );
    }
}
