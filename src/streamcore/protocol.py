"""placeholder: replaced by the frame decoder."""
class DecodedFrame: pass
def decode_frame(data): raise NotImplementedError
