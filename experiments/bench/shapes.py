"""Paper models' decoder shapes, for random-weight stand-ins (timing and memory do not depend on the weights'
values): the benchmark builds them in memory, experiments.random_checkpoint writes them as checkpoint folders."""

SHAPES = {
    "llama2-7b": dict(model_type="llama", hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                      num_attention_heads=32, num_key_value_heads=32, vocab_size=32000, max_position_embeddings=4096),
    "llama2-13b": dict(model_type="llama", hidden_size=5120, intermediate_size=13824, num_hidden_layers=40,
                       num_attention_heads=40, num_key_value_heads=40, vocab_size=32000, max_position_embeddings=4096),
    "tiny": dict(model_type="llama", hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                 num_attention_heads=4, num_key_value_heads=2, vocab_size=128, max_position_embeddings=2048),
}
