"""Tiny random pretrained encoders (2 layers, width 32), saved as Hugging Face folders the way a
downloaded checkpoint is, so tests load them by path through the real code."""

from __future__ import annotations

from pathlib import Path

FAMILIES = ("whisper", "hubert", "wav2vec2", "wavlm")

WHISPER_BASE = Path(__file__).resolve().parent.parent.parent / "shared" / "models" / "whisper-base"


def _waveform_config(family: str):
    from transformers import HubertConfig, Wav2Vec2Config, WavLMConfig

    cls = {"hubert": HubertConfig, "wav2vec2": Wav2Vec2Config, "wavlm": WavLMConfig}[family]
    return cls(num_hidden_layers=2, hidden_size=32, num_attention_heads=2, intermediate_size=64,
               conv_dim=(32, 32), conv_stride=(5, 4), conv_kernel=(10, 4),
               num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2,
               # wavlm/wav2vec2 "layer" norm: the feature extractor returns attention masks
               feat_extract_norm="layer" if family == "wavlm" else "group")


def make_tiny_encoder(family: str, folder: Path, seed: int = 0) -> Path:
    """A random ``family`` model with 2 layers of width 32 in ``folder`` (model + preprocessor
    config, as on the hub); returns the folder."""
    import torch
    from transformers import (AutoModel, Wav2Vec2FeatureExtractor, WhisperConfig,
                              WhisperFeatureExtractor, WhisperModel)

    torch.manual_seed(seed)
    folder = Path(folder)
    if family == "whisper":
        cfg = WhisperConfig(d_model=32, encoder_layers=2, decoder_layers=1,
                            encoder_attention_heads=2, decoder_attention_heads=2,
                            encoder_ffn_dim=64, decoder_ffn_dim=64, num_mel_bins=80,
                            vocab_size=64, max_target_positions=32,
                            decoder_start_token_id=1, pad_token_id=0, eos_token_id=2,
                            bos_token_id=1)
        WhisperModel(cfg).save_pretrained(folder)
        WhisperFeatureExtractor(feature_size=80).save_pretrained(folder)
    else:
        cfg = _waveform_config(family)
        AutoModel.from_config(cfg).save_pretrained(folder)
        Wav2Vec2FeatureExtractor(do_normalize=True,
                                 return_attention_mask=cfg.feat_extract_norm == "layer"
                                 ).save_pretrained(folder)
    return folder


WHISPER_SPECIALS = ("<|endoftext|>", "<|startoftranscript|>", "<|en|>", "<|de|>", "<|translate|>",
                    "<|transcribe|>", "<|startoflm|>", "<|startofprev|>", "<|nospeech|>",
                    "<|notimestamps|>")


def make_tiny_whisper_asr(folder: Path, seed: int = 0) -> Path:
    """A random ``WhisperForConditionalGeneration`` (2+1 layers of width 32) with a byte-level
    tokenizer, the processor and a generation config that knows English and German, in
    ``folder`` as on the hub: what ``transcribe.model`` loads. Its text is noise; its shapes,
    special tokens and language detection are Whisper's."""
    import json

    import torch
    from transformers import (GenerationConfig, WhisperConfig, WhisperFeatureExtractor,
                              WhisperForConditionalGeneration, WhisperProcessor, WhisperTokenizer)
    from tokenizers.pre_tokenizers import ByteLevel

    torch.manual_seed(seed)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    chars = sorted(ByteLevel.alphabet())  # the 256 byte-level symbols
    vocab = {c: i for i, c in enumerate(chars)}
    ids = {tok: len(vocab) + k for k, tok in enumerate(WHISPER_SPECIALS)}
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = WhisperTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"),
                                 unk_token="<|endoftext|>", bos_token="<|endoftext|>",
                                 eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    tokenizer.add_special_tokens({"additional_special_tokens": list(WHISPER_SPECIALS[1:])})
    assert all(tokenizer.convert_tokens_to_ids(t) == i for t, i in ids.items()), "token ids moved"
    eot, sot = ids["<|endoftext|>"], ids["<|startoftranscript|>"]
    cfg = WhisperConfig(d_model=32, encoder_layers=2, decoder_layers=1, encoder_attention_heads=2,
                        decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64,
                        num_mel_bins=80, vocab_size=len(vocab) + len(ids), max_target_positions=64,
                        decoder_start_token_id=sot, pad_token_id=eot, eos_token_id=eot,
                        bos_token_id=eot, suppress_tokens=[], begin_suppress_tokens=[])
    model = WhisperForConditionalGeneration(cfg)
    model.generation_config = GenerationConfig(
        decoder_start_token_id=sot, eos_token_id=eot, pad_token_id=eot, bos_token_id=eot,
        is_multilingual=True, lang_to_id={"<|en|>": ids["<|en|>"], "<|de|>": ids["<|de|>"]},
        task_to_id={"transcribe": ids["<|transcribe|>"], "translate": ids["<|translate|>"]},
        no_timestamps_token_id=ids["<|notimestamps|>"], prev_sot_token_id=ids["<|startofprev|>"],
        max_length=48)
    model.save_pretrained(folder)
    WhisperProcessor(WhisperFeatureExtractor(feature_size=80), tokenizer).save_pretrained(folder)
    return folder


def make_tiny_bert(folder: Path, seed: int = 0) -> Path:
    """A random BERT (2 layers of width 32) with a WordPiece vocabulary of letters, digits and
    punctuation (German umlauts included), saved as on the hub: what ``text.text_model``
    loads."""
    import string

    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    torch.manual_seed(seed)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    chars = list(string.ascii_lowercase + string.digits + string.punctuation + "äöüß")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *chars, *[f"##{c}" for c in chars]]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizerFast(str(folder / "vocab.txt")).save_pretrained(folder)
    BertModel(BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2,
                         num_attention_heads=2, intermediate_size=64,
                         max_position_embeddings=160)).save_pretrained(folder)
    return folder
