"""Tiny causal LMs built locally for generation tests (no hub downloads).

``build_scripted_lm`` makes a Llama-architecture model whose greedy output is a
fixed token sequence, whatever the prompt: each decoder layer's output projections
are zero, so the hidden state at a position is the embedding of its token; the
embeddings are one-hot and ``lm_head`` maps token i to the next token of the
script. The model therefore goes through the real transformers loading,
chat-template, generate and decode paths and still answers predictably (e.g.
"考え中…\\n\\n和訳:\\n<translation>"), which is what a parser test needs.
"""

from __future__ import annotations

from pathlib import Path

SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>"]
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<{{ m['role'] }}> {{ m['content'] }} {% endfor %}"
    "{% if add_generation_prompt %}<model>{% endif %}"
)


def build_scripted_lm(out_dir: str | Path, script: list[str], max_position: int = 4096) -> str:
    """Save a model + tokenizer to ``out_dir`` that greedily generates ``script`` then EOS.

    The script's tokens must be distinct (the next token depends only on the current)."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    if len(set(script)) != len(script):
        raise ValueError("script tokens must be distinct")
    vocab_list = SPECIALS + ["<model>", "<system>", "<user>", "<assistant>"] + script
    vocab = {tok: i for i, tok in enumerate(vocab_list)}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    core.decoder = decoders.Fuse()  # concatenate tokens: Japanese has no spaces
    tok = PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<bos>", eos_token="<eos>",
                                  pad_token="<pad>", unk_token="<unk>",
                                  model_max_length=max_position)
    tok.chat_template = CHAT_TEMPLATE

    hidden = 8 * ((len(vocab) + 7) // 8)
    config = LlamaConfig(vocab_size=len(vocab), hidden_size=hidden, intermediate_size=hidden,
                         num_hidden_layers=1, num_attention_heads=1, num_key_value_heads=1,
                         max_position_embeddings=max_position, tie_word_embeddings=False,
                         bos_token_id=vocab["<bos>"], eos_token_id=vocab["<eos>"],
                         pad_token_id=vocab["<pad>"])
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        model.model.embed_tokens.weight.copy_(torch.eye(len(vocab), hidden))
        model.model.norm.weight.fill_(1.0)
        for layer in model.model.layers:
            layer.input_layernorm.weight.fill_(1.0)
            layer.post_attention_layernorm.weight.fill_(1.0)
        nxt = {vocab["<model>"]: vocab[script[0]]}
        nxt.update({vocab[a]: vocab[b] for a, b in zip(script, script[1:])})
        nxt[vocab[script[-1]]] = vocab["<eos>"]
        for src, dst in nxt.items():
            model.lm_head.weight[dst, src] = 1.0
    model.generation_config.eos_token_id = vocab["<eos>"]
    model.generation_config.pad_token_id = vocab["<pad>"]
    out = Path(out_dir)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return str(out)
