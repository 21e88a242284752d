# placeholder: replaced by the real implementation
class Conflator: pass
class IntConflator: pass
