"""Japanese mention patterns for the 18 CT-RATE findings.

Written for radiology Japanese as in CT-RATE-JPN (machine-translated and
radiologist-refined): すりガラス影, 浸潤影/コンソリデーション, 索状影, 心嚢液貯留,
病的サイズのリンパ節, etc. Text is NFKC-normalised before matching, so
full-width digits and half-width katakana need no special cases.

"浸潤影" is the usual Japanese term for consolidation, so it maps to
consolidation, while "浸潤" without 影 (infiltration) maps to lung opacity.
"""

from __future__ import annotations

from ctray.tasks.findings.patterns_common import (
    FindingRule,
    P,
    lymph_node_check,
    rx,
    vessel_check,
)

LUNG = rx(r"肺|[上中下]葉|区域|舌区|胸膜下|葉間|気管支|肺門")
NOT_LUNG = rx(r"甲状腺|副腎|肝|乳房|乳腺|腎|脾|膵|胆|皮膚|皮下|軟部|腋窩|骨|椎|肋|胸壁|胸腺|縦隔|"
              r"食道|胃|筋|脂肪")

_VASCULAR = (
    P(r"アテローム|粥腫|プラーク|動脈硬化", forbids=r"胸膜(?:の)?(?:石灰化)?プラーク"),
    P(r"石灰化"),
)
_CORONARY = rx(r"冠(?:状)?動脈|LAD|RCA|LCX|左前下行枝|回旋枝")
_OTHER_VESSEL = rx(r"大動脈|動脈|血管|弓部|頸動脈|鎖骨下|腕頭|腸骨")
_VALVE = rx(r"(?:大動脈|僧帽|三尖|肺動脈)?弁(?:輪)?")
_NEEDS_VESSEL = rx(r"^石灰化$")

_LN_STRONG_NEG = rx(
    r"病的(?:な)?(?:サイズ|大きさ|径)?(?:に)?(?:達しない|達せず|未満|ではない|でない)|"
    r"(?:有意な|病的な?)?腫大(?:は|を)?(?:なし|ない|認めない|認められない|認めず)|"
    r"\d+(?:\.\d+)?\s*(?:mm|cm)(?:未満|以下|を超えない|に満たない)|超えない|未満|"
    r"正常(?:範囲|大|サイズ)|非病的|病的意義(?:の)?(?:ない|なし|乏しい)|有意なサイズではない")
_LN_WEAK_NEG = rx(r"ミリ(?:メートル)?(?:大|サイズ|単位)|数\s*mm|微小|小さな|小型|小さい|石灰化|脂肪門|反応性")

_LN_AFFIRM = rx(r"腫大|腫脹|リンパ節症|LAP|病的|融合|転移|壊死")

RULES_JA: tuple[FindingRule, ...] = (
    FindingRule("medical_material", (
        P(r"カテーテル|ポート|ペースメーカ|除細動器|ICD|ステント|縫合(?:糸|材料|ワイヤー?|器)|"
          r"ワイヤー|胸骨(?:正中)?切開|人工(?:弁|血管|物|関節|骨頭)|プロテーゼ|インプラント|"
          r"クリップ|コイル|カニューレ|気管切開|チューブ|ドレーン|胃管|電極|リード線|金属|"
          r"スクリュー|手術材料|外科的材料|医療(?:材料|機器|器具)|デバイス|(?:弁|血管)置換"),
    )),
    FindingRule("arterial_wall_calcification", _VASCULAR,
                check=vessel_check(_CORONARY, _OTHER_VESSEL, _VALVE, False, _NEEDS_VESSEL)),
    FindingRule("cardiomegaly", (
        P(r"心拡大|心肥大|心臓(?:の)?(?:サイズ|大きさ|径|陰影)?(?:は|が)?(?:軽度|やや)?(?:増大|拡大|腫大|肥大)|"
          r"心(?:陰影|サイズ)(?:の)?(?:拡大|増大)|心胸郭比(?:は|が|の)?(?:軽度)?(?:増大|上昇|拡大)|"
          r"心腔(?:の)?拡大|(?:左|右)?(?:心房|心室)(?:の)?(?:拡大|拡張)"),
    )),
    FindingRule("pericardial_effusion", (
        P(r"心(?:嚢|膜)(?:腔)?(?:内)?(?:に|の)?(?:少量の|微量の|わずかな|軽度の)?(?:液体?|水|滲出液?)"
          r"(?:貯留)?|心(?:嚢|膜)(?:腔)?(?:内)?(?:に|の)?(?:少量の|微量の|わずかな|軽度の)?貯留|"
          r"心(?:嚢|膜)(?:・|、|や|および|及び|と)胸(?:膜|水)[^。、]{0,4}?(?:液|水|貯留)"),
    )),
    FindingRule("coronary_artery_wall_calcification", _VASCULAR,
                check=vessel_check(_CORONARY, _OTHER_VESSEL, _VALVE, True, _NEEDS_VESSEL)),
    FindingRule("hiatal_hernia", (
        P(r"(?:食道)?裂孔ヘルニア|滑脱型(?:の)?(?:食道裂孔)?ヘルニア|傍食道ヘルニア|食道[^。]{0,10}ヘルニア"),
    )),
    FindingRule("lymphadenopathy", (
        P(r"リンパ節腫大|リンパ節腫脹|リンパ節症|腫大(?:した)?リンパ節|LAP"),
        P(r"リンパ節(?!腫大|腫脹|症)"),
    ), exclude=rx(r"肺内リンパ節|胸膜下リンパ節|乳房内リンパ節|葉間リンパ節|葉間裂"),
        check=lymph_node_check(_LN_STRONG_NEG, _LN_WEAK_NEG, _LN_AFFIRM)),
    FindingRule("emphysema", (
        P(r"(?<!皮下)(?<!縦隔)(?<!間質性)(?<!軟部)気腫", forbids=r"皮下気腫|縦隔気腫"),
        P(r"(?<![ァ-ヶ])ブラ(?![ァ-ヶー])|ブレブ|嚢胞性変化"),
    )),
    FindingRule("atelectasis", (
        P(r"無気肺|虚脱"),
    )),
    FindingRule("lung_nodule", (
        P(r"(?<!網状)(?<!粒状)結節(?!状の?(?:肥厚|濃度))"),
        P(r"腫瘤", requires=LUNG.pattern),
    ), exclude=NOT_LUNG, keep=LUNG),
    FindingRule("lung_opacity", (
        P(r"(?:すり|スリ|磨り)ガラス(?!(?:影|陰影|状|様|濃度)?(?:の)?(?:小)?結節)|浸潤(?!影)|混濁|肺炎|"
          r"クレイジーペイビング|crazy\s*paving|透過性(?:の)?低下"),
        P(r"(?<!心)陰影|濃度上昇|高吸収(?:域)?",
          forbids=r"陳旧|後遺|線維|瘢痕|無気肺|索状|結節影|骨|椎"),
    ), exclude=NOT_LUNG, keep=LUNG),
    FindingRule("pulmonary_fibrotic_sequela", (
        P(r"線維化|線維性|線維(?:状|索)?(?:影|変化|瘢痕)|線維無気肺|索状(?:影|構造|陰影)?|瘢痕|"
          r"後遺(?:症|性)?(?:変化)?|陳旧性|蜂巣肺|牽引性気管支拡張|胸膜肺実質(?:の)?(?:帯|バンド)|"
          r"網状(?:影|結節|陰影)|構造(?:の)?(?:歪み|改変)"),
    ), exclude=NOT_LUNG, keep=LUNG),
    FindingRule("pleural_effusion", (
        P(r"胸水|胸膜(?:腔)?(?:内)?(?:に|の)?(?:少量の|微量の|わずかな)?(?:液体?|滲出液?)(?:貯留)?|"
          r"胸腔(?:内)?(?:に|の)?(?:液体|液)(?:貯留)?|血胸|膿胸|葉間(?:胸水|液体貯留)"),
    )),
    FindingRule("mosaic_attenuation_pattern", (
        P(r"モザイク|エアトラッピング|air\s*trapping"),
    )),
    FindingRule("peribronchial_thickening", (
        P(r"気管支(?:周囲|壁)(?:の)?(?:間質)?(?:の)?(?:壁)?肥厚|気管支周囲(?:の)?カフ|気管支血管束(?:の)?肥厚"),
    )),
    FindingRule("consolidation", (
        P(r"コンソリデーション|浸潤影|硬化像|consolidation|エアブロンコグラム|気管支透亮像"),
    )),
    FindingRule("bronchiectasis", (
        P(r"(?:細)?気管支(?:の)?拡張(?!剤|薬)"),
    )),
    FindingRule("interlobular_septal_thickening", (
        P(r"小葉間(?:中)?隔壁?(?:の)?肥厚?|隔壁(?:の)?肥厚|クレイジーペイビング|crazy\s*paving|カーリー"),
    )),
)
