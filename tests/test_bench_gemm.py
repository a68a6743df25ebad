from rlstack.bench.gemm import decode_matmuls


def test_decode_matmuls_follow_the_embedded_model_config():
    shapes = decode_matmuls("smollm2")
    # SmolLM2-135M: hidden 576, 9 query and 3 key/value heads of 64, MLP 1536, 30 layers, vocabulary 49152
    assert shapes == {
        "qkv": (960, 576, 30),
        "o": (576, 576, 30),
        "gate_up": (3072, 576, 30),
        "down": (576, 1536, 30),
        "lm_head": (49152, 576, 1),
    }
