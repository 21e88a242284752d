# placeholder: replaced by the real implementation
class AdaptiveWindow: pass
class WindowScheduler: pass
