# placeholder: replaced by the real implementation
class FrameEncoder: pass
class Codec: pass
