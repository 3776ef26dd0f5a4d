"""English mention patterns for the 18 CT-RATE findings.

Vocabulary comes from reading the CT-RATE validation reports (Turkish reports
machine-translated to English): "calcific atheroma plaques", "pleural
effusion-thickening", "sequelae density increases", "pathological LAP",
"mosaic attenuation pattern (small airway disease?)", etc.
"""

from __future__ import annotations

from ctray.tasks.findings.patterns_common import (
    FindingRule,
    P,
    lymph_node_check,
    reverse_effusion_check,
    rx,
    vessel_check,
)

LUNG = rx(r"\b(?:lungs?|(?:upper|middle|lower)\s+lobes?|lobar|pulmonary|parenchyma\w*|"
          r"segments?|segmental|lingul\w*|"
          r"fissur\w*|subpleural|apex|apices|apical|bronch\w*|perihilar|intrapulmonary|"
          r"hemithorax)\b")
_NOT_LUNG = (r"\b(?:thyroid|adrenal|breasts?|mammary|liver|hepatic|kidneys?|renal|spleen|splenic|"
             r"pancrea\w*|gallbladder|skin|subcutaneous|cutaneous|soft\s+tissue|axilla\w*|"
             r"chest\s+wall|bones?|osseous|vertebra\w*|corpus|costal|ribs?|sternum|scapula|"
             r"thymus|mediastin\w*|esophag\w*|stomach|gastric|muscles?|fat(?:ty)?|osteo\w*)\b")
NOT_LUNG = rx(_NOT_LUNG)

_ATHERO = (r"\b(?:atherom\w*|atheroscleros\w*|atherosclerotic|(?:calcific|calcified|calcium)\s+"
           r"plaques?|plaques?)\b")
_VESSEL = (r"(?:aort\w*|arter\w*|vascular|vessels?|carotid|subclavian|brachiocephalic|iliac|"
           r"supra-?aortic|innominate|arch|coronar\w*|LAD|RCA|LCX|circumflex)")
_CALCIFIED_VESSEL = (rf"\bcalcif\w*(?:\W+\w+){{0,6}}?\W+{_VESSEL}\b|\b{_VESSEL}\b(?:\W+\w+){{0,4}}?"
                     r"\W+calcif\w*")
_CORONARY = rx(r"\bcoronar\w*(?:\s+(?:arter(?:y|ies)|vascular\s+structures?|vessels?|walls?))?|"
               r"\b(?:LAD|RCA|LCX|circumflex|left\s+anterior\s+descending)\b")
_OTHER_VESSEL = rx(r"\b(?:aort\w*|arter\w*|vascular|vessels?|carotid|subclavian|brachiocephalic|"
                   r"iliac|supra-?aortic|innominate|arch)\b")
_VALVE = rx(r"\b(?:aortic|mitral|tricuspid|pulmonary)\s+(?:valves?|annulus)\b|\bvalves?\b|"
            r"\bannul\w*")
_VASCULAR = (P(_ATHERO, forbids=r"\bpleura\w*\s+plaques?"), P(_CALCIFIED_VESSEL))
_NEEDS_VESSEL = rx(r"^calcif|calcif\w*$")

_LN_STRONG_NEG = rx(
    r"\b(?:less|smaller|shorter)\s+than\b|\bunder\s+\d|\bbelow\s+(?:the\s+)?(?:pathologic\w*|"
    r"significant|normal)|\bnot\s+(?:reach\w*|exceed\w*|pathologic\w*|enlarged|significant)|"
    r"\b(?:do|does|did|cannot|could\s+not|can\s+not)\s+(?:not\s+)?(?:reach|exceed)\b|"
    r"\bnon-?pathologic\w*|\bnormal\s+(?:size|sized|dimensions?)|\bwithin\s+normal\b|"
    r"\bsub-?centimetric|\bup\s+to\s+the\s+upper\s+limit")
_LN_WEAK_NEG = rx(r"\bmill?imet\w*|\bmillimeter\w*|\bmillimeric\b|\bsmall\b|\btiny\b|"
                  r"\bcalcifi\w*|\bcalcific\b|\bfatty\s+hil\w*|\breactive\b")

_LN_AFFIRM = rx(r"adenopath\w*|\bLAPs?\b|\b(?:enlarged|enlargement|pathologic\w*|conglomerat\w*|"
                r"metasta\w*|necrotic|bulky)\b")

RULES_EN: tuple[FindingRule, ...] = (
    FindingRule("medical_material", (
        P(r"\bcatheters?\b|\bport\s+(?:catheter|chamber|reservoir|system)s?\b|\bport\b(?=\W+(?:and|"
          r"with)\W+catheter)|\bpace-?makers?\b|\bdefibrillator\b|\bICD\b|\bstent\w*\b|"
          r"\bsutures?\b|\bsternotom\w*|\bsternal\s+(?:wires?|cerclage)|\bprosthe(?:sis|ses|tic)\b|"
          r"\bimplants?\b|\bclips?\b|\bcannula\b|\btracheostom\w*|\b(?:endotracheal|tracheal|"
          r"nasogastric|chest|thoracostomy|feeding|drainage|gastrostomy)\s+tubes?\b|\bdrains?\b|"
          r"\belectrodes?\b|\bmetallic\s+(?:densit\w+|material\w*|implant\w*|foreign|artifact\w*|"
          r"object\w*|screw\w*|plate\w*|wire\w*|fixation|suture\w*|clip\w*|image\w*)|"
          r"\b(?:surgical|operation|postoperative|post-operative)\s+materials?\b|\bcoils?\b|"
          r"\bscrews?\b|\bfixation\s+(?:material|plate|screw)\w*|\bvalve\s+replacement|"
          r"\bmechanical\s+valve|\b(?:bypass|stent)\s+grafts?\b|\bexpanders?\b|\bIVC\s+filter\b|"
          r"\bcardiac\s+device\b"),
    )),
    FindingRule("arterial_wall_calcification", _VASCULAR,
                check=vessel_check(_CORONARY, _OTHER_VESSEL, _VALVE, False, _NEEDS_VESSEL)),
    FindingRule("cardiomegaly", (
        P(r"\bcardiomegal\w*"),
        P(r"\b(?:heart|cardiac)\b(?:\W+\w+){0,4}?\W+(?:increas\w*|enlarg\w*|large|larger|"
          r"dilat\w*|hypertroph\w*)\b", forbids=r"\bfailure\b|\bupper\s+limit"),
        P(r"\b(?:increas\w*|enlarg\w*|large)\b(?:\W+\w+){0,3}?\W+(?:heart|cardiac)\s+(?:size|sizes|"
          r"dimensions?|silhouette|shadow|contours?)\b"),
        P(r"\benlarged\s+heart\b|\bcardiothoracic\s+(?:index|ratio)\b(?:\W+\w+){0,4}?\W+increas\w*|"
          r"\bincreas\w*(?:\W+\w+){0,3}?\W+cardiothoracic\s+(?:index|ratio)\b"),
    )),
    FindingRule("pericardial_effusion", (
        P(r"\bpericardi\w*(?:[\s,\-/]+(?:and|or|pleural|minimal|mild|small|slight|thickening|"
          r"thickness|smear-like|right|left|bilateral))*[\s,\-/]+effusions?\b"),
        P(r"\beffusions?\b[^,;.]{0,60}?\bpericardi\w*"),
        P(r"\bhemopericardium\b|\bpericardial\s+fluid\b|\bfluid\b[^,;.]{0,40}?\bpericardi\w*"),
    ), check=reverse_effusion_check(rx(r"pleura\w*[\s\-]*$"), rx(r"pleura|hemithora"))),
    FindingRule("coronary_artery_wall_calcification", _VASCULAR,
                check=vessel_check(_CORONARY, _OTHER_VESSEL, _VALVE, True, _NEEDS_VESSEL)),
    FindingRule("hiatal_hernia", (
        P(r"\bhiatal\b|\bhiatus\s+hernia|"
          r"\bhernia\w*\b(?:\W+\w+){0,5}?\W+(?:hiatus|hiatal|esophag\w*|"
          r"gastroesophageal|esophagogastric)\b|\bsliding(?:\s+type)?(?:\W+\w+){0,2}?\W+hernia|"
          r"\bparaesophageal\s+hernia|\besophag\w*(?:\W+\w+){0,4}?\W+hernia"),
    )),
    FindingRule("lymphadenopathy", (
        P(r"\b(?:lymphadenopath\w*|adenopath\w*|LAPs?)\b"),
        P(r"\blymph\s*nod(?:e|es|al|ule|ules)\b(?!\s+(?:stations?|levels?|regions?))"),
    ), exclude=rx(r"\b(?:intra-?pulmonary|subpleural|peri-?fissural|fissur\w*|intra-?mammary|"
                  r"intraparotid)\b"),
        check=lymph_node_check(_LN_STRONG_NEG, _LN_WEAK_NEG, _LN_AFFIRM)),
    FindingRule("emphysema", (
        P(r"\bemphysem\w*", forbids=r"\b(?:subcutaneous|soft[- ]tissue|mediastinal|surgical|"
                                    r"interstitial)\s+emphysem"),
        P(r"\bbullae?\b|\bbullous\b|\bblebs?\b"),
    )),
    FindingRule("atelectasis", (
        P(r"atelecta\w*"),
        P(r"\bcollaps\w*", requires=r"\b(?:lungs?|lob\w+|segment\w*)\b",
          forbids=r"\bvertebra\w*|\bcorpus\b|\bfracture"),
    )),
    FindingRule("lung_nodule", (
        P(r"\b(?:micro)?nodul(?:e|es)\b|\bnodular\s+(?:lesions?|images?|appearances?|formations?|"
          r"structures?|foc(?:us|i)|densit(?:y|ies)|opacit(?:y|ies))\b"),
        P(r"\bmass(?:es)?\b", requires=LUNG.pattern, forbids=r"\bno\b[^.;]*\bmass"),
    ), exclude=NOT_LUNG, keep=LUNG),
    FindingRule("lung_opacity", (
        # "pneumonia" alone is a diagnosis ("atypical for Covid-19 pneumonia"), not an opacity.
        P(r"\bground[- ]?glass\b(?![- ]?(?:density\s+)?nodul)|\bopacit(?:y|ies)\b|"
          r"\bcrazy[- ]paving\b|"
          r"\bpneumonic\s+(?:infiltrat\w*|foc(?:us|i)|areas?|consolidat\w*|involvement)|"
          r"\bhaz(?:y|iness)\b"),
        P(r"\binfiltrat\w*", forbids=r"\bfatty\s+infiltrat|\bmalignan\w*\s+infiltrat"),
        P(r"\b(?:density|densities)\s+increas\w*|\bincreas\w*\s+(?:in\s+)?(?:the\s+)?(?:\w+\s+)?"
          r"densit\w*|\bincreased\s+densit\w*|\bhyperdens\w*",
          forbids=r"\bsequel\w*|\bfibro\w*|atelecta\w*|\bscar\w*|\bbands?\b|\bosteo\w*", window=60),
    ), exclude=NOT_LUNG, keep=LUNG),
    FindingRule("pulmonary_fibrotic_sequela", (
        P(r"\bsequel\w*|\bfibro(?:sis|tic|us)\b|fibroatelecta\w*|\bfibrotic\b|\bcicatri\w*|"
          r"paracicatri\w*|\bhoneycomb\w*|\btraction(?:al)?\s+bronchiect\w*|"
          r"\b(?:pleuro-?)?parenchymal\s+bands?\b|\bfibrous\s+bands?\b|\bscar(?:s|ring)?\b|"
          r"\breticula(?:r|tion)\b"),
    ), exclude=NOT_LUNG, keep=LUNG),
    FindingRule("pleural_effusion", (
        P(r"\bpleura\w*(?:[\s,\-/]+(?:and|or|pericardial|minimal|mild|small|slight|thickening|"
          r"thickness|free|fluid|massive|bilateral|right|left|loculated))*[\s,\-/]+effusions?\b"),
        P(r"\beffusions?\b[^,;.]{0,60}?\b(?:pleura\w*|hemithora\w*)"),
        P(r"\bpleural\s+fluid\b|\bhydrothora\w*|\bhemothora\w*|\bempyema\b|\binterlobar\s+"
          r"(?:fluid|effusion)|"
          r"\bfluid\b[^,;.]{0,40}?\b(?:pleural\s+(?:space|cavity)|hemithora\w*)"),
    ), check=reverse_effusion_check(rx(r"pericardi\w*[\s\-]*$"), rx(r"pericardi"))),
    FindingRule("mosaic_attenuation_pattern", (
        P(r"\bmosaic\w*|\bair[- ]trapping\b"),
    )),
    FindingRule("peribronchial_thickening", (
        P(r"\bperi-?bronch\w*(?:\W+\w+){0,2}?\W+thick\w*|\bthicken\w*(?:\W+\w+){0,3}?\W+(?:peri-?)?"
          r"bronch(?:ial|us|i)\b|\bbronchial\s+wall\s+(?:thick\w*)|\bperibronchial\s+cuff\w*"),
    )),
    FindingRule("consolidation", (
        P(r"\bconsolidat\w*|\bair[- ]bronchogram\w*",
          forbids=r"\bfractur\w*|\bcallus\b|\bbone\b"),
    )),
    FindingRule("bronchiectasis", (
        P(r"bronchiecta\w*|\bbronchiolectas\w*|\bectasi\w*(?:\W+\w+){0,6}?\W+bronch\w*|"
          r"\bbronch\w*\s+(?:dilat\w*|ectasi\w*)"),
    )),
    FindingRule("interlobular_septal_thickening", (
        P(r"\bsept(?:al|a|um)\b(?:\W+\w+){0,2}?\W+thick\w*|\bthicken\w*(?:\W+\w+){0,5}?\W+"
          r"sept(?:a|al|um)\b|\bcrazy[- ]paving\b|\bkerley\b",
          forbids=r"\b(?:inter)?(?:ventricular|atrial)\s+sept|\bnasal\s+sept"),
    )),
)
