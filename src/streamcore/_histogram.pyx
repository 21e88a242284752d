# placeholder: replaced by the real implementation
class Histogram: pass
