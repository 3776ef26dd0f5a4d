"""Paired English/Japanese sentence templates for the synthetic sample corpus.

Written for ctray (not taken from any dataset). Each template is an (en, ja) pair
with the same slots; a slot value is itself an (en, ja) pair, so the Japanese
report is the translation of the English one by construction. Positive templates
assert a finding, negative ones deny it with varied negation; NEG_SHARED and the
COMBO tables cover sentences about two findings at once.
"""

from __future__ import annotations

SIDE = [("right", "右"), ("left", "左")]
LOBE = [("the right upper lobe", "右肺上葉"), ("the right middle lobe", "右肺中葉"),
        ("the right lower lobe", "右肺下葉"), ("the left upper lobe", "左肺上葉"),
        ("the left lower lobe", "左肺下葉"), ("the lingula", "左肺舌区")]
WHERE = LOBE + [("both lungs", "両肺"), ("the lower lobes of both lungs", "両肺下葉"),
                ("the upper lobes of both lungs", "両肺上葉")]
DEG = [("Minimal", "軽微な"), ("Mild", "軽度の"), ("Moderate", "中等度の"), ("Marked", "高度の")]
AMOUNT = [("minimal", "少量の"), ("mild", "軽度の"), ("moderate", "中等量の"), ("a small amount of", "少量の")]
STATION = [("subcarinal", "気管分岐下"), ("right lower paratracheal", "右下部気管傍"),
           ("prevascular", "血管前"), ("aortopulmonary window", "大動脈肺動脈窓"),
           ("right hilar", "右肺門")]
DEVICE = [("A port catheter extending to the superior vena cava is observed on the {side} "
           "anterior chest wall.", "{side}前胸壁にポートカテーテルを認め、先端は上大静脈に位置する。"),
          ("Metallic sternotomy wires are present.", "胸骨正中切開後のワイヤーを認める。"),
          ("A cardiac pacemaker with leads in the right heart chambers is observed.",
           "ペースメーカー本体と右心系に至るリードを認める。"),
          ("A central venous catheter is seen on the {side}.", "{side}側から中心静脈カテーテルが挿入されている。"),
          ("A stent is observed in the left anterior descending artery.", "左前下行枝にステントを認める。"),
          ("Surgical clips are observed in the gallbladder bed.", "胆嚢窩に手術クリップを認める。")]

# column -> list of (en, ja) templates
POSITIVE: dict[str, list[tuple[str, str]]] = {
    "medical_material": DEVICE,
    "cardiomegaly": [
        ("Cardiomegaly is present.", "心拡大を認める。"),
        ("The heart size is increased.", "心臓の大きさは増大している。"),
        ("The cardiothoracic ratio is increased in favor of the heart.", "心胸郭比の増大を認める。"),
        ("{Deg} cardiomegaly is observed.", "{deg}心拡大がみられる。"),
    ],
    "pericardial_effusion": [
        ("There is {amount} pericardial effusion.", "{amount}心嚢液貯留を認める。"),
        ("Pericardial effusion measuring {mm} mm in its thickest part is observed.",
         "最大厚{mm}mmの心嚢液貯留を認める。"),
        ("A smear-like effusion is observed in the pericardial space.", "心膜腔に薄層の液体貯留を認める。"),
    ],
    "hiatal_hernia": [
        ("A sliding type hiatal hernia is observed at the lower end of the esophagus.",
         "食道下端に滑脱型食道裂孔ヘルニアを認める。"),
        ("{Deg} hiatal hernia.", "{deg}食道裂孔ヘルニア。"),
        ("There is a small hiatal hernia.", "小さな食道裂孔ヘルニアがある。"),
    ],
    "lymphadenopathy": [
        ("Enlarged lymph nodes measuring up to {big}x{ln} mm are observed in the {station} area.",
         "{station}領域に最大{big}x{ln}mmの腫大リンパ節を認める。"),
        ("There is a {station} lymph node with a short axis of {ln} mm.",
         "{station}に短径{ln}mmのリンパ節腫大を認める。"),
        ("Mediastinal lymphadenopathy is present, the largest {station} node measuring {ln} mm in "
         "short axis.", "縦隔リンパ節腫大を認め、最大のものは{station}で短径{ln}mmである。"),
        ("Pathologically enlarged lymph nodes are seen in the mediastinum and both hilar regions.",
         "縦隔および両側肺門に病的な腫大リンパ節を認める。"),
    ],
    "emphysema": [
        ("{Deg} emphysematous changes are observed in both lungs.", "両肺に{deg}気腫性変化を認める。"),
        ("Centrilobular emphysema is present in {where}.", "{where}に小葉中心性肺気腫を認める。"),
        ("Paraseptal emphysema and apical bullae are observed.", "傍隔壁型肺気腫と肺尖部のブラを認める。"),
    ],
    "atelectasis": [
        ("Linear atelectasis is observed in {lobe}.", "{lobe}に線状無気肺を認める。"),
        ("Subsegmental atelectatic changes are present in {where}.", "{where}に亜区域性の無気肺性変化を認める。"),
        ("Passive atelectasis is seen in {lobe}.", "{lobe}に受動無気肺を認める。"),
    ],
    "lung_nodule": [
        ("A {mm} mm nodule is observed in {lobe}.", "{lobe}に{mm}mmの結節を認める。"),
        ("There are several millimetric nonspecific nodules in both lungs.",
         "両肺に数個のミリ単位の非特異的結節を認める。"),
        ("A solid nodule measuring {mm}x{mm2} mm is present in {lobe}.",
         "{lobe}に{mm}x{mm2}mm大の充実性結節がある。"),
        ("A part-solid nodule of {mm} mm is seen in {lobe}; follow-up is recommended.",
         "{lobe}に{mm}mmの部分充実性結節を認め、経過観察が推奨される。"),
    ],
    "lung_opacity": [
        ("Patchy ground glass opacities are observed in {where}.", "{where}に斑状のすりガラス影を認める。"),
        ("Ground-glass density increases are present in {lobe}.", "{lobe}にすりガラス状の濃度上昇を認める。"),
        ("Peripheral subpleural ground glass areas are observed in both lungs.",
         "両肺の末梢胸膜下にすりガラス影を認める。"),
    ],
    "pulmonary_fibrotic_sequela": [
        ("Fibrotic sequelae bands are observed in {lobe}.", "{lobe}に線維性の索状影を認める。"),
        ("Pleuroparenchymal sequelae changes are present in the apices of both lungs.",
         "両肺尖部に胸膜肺実質の陳旧性変化を認める。"),
        ("Reticular fibrotic changes are observed in {where}.", "{where}に網状の線維化を認める。"),
    ],
    "pleural_effusion": [
        ("There is {amount} pleural effusion on the {side}.", "{side}側に{amount}胸水を認める。"),
        ("Bilateral pleural effusion is observed, measuring {mm} mm on the right.",
         "両側胸水を認め、右側の最大厚は{mm}mmである。"),
        ("Pleural effusion measuring {mm} mm in its thickest part is seen in the {side} "
         "hemithorax.",
         "{side}胸腔に最大厚{mm}mmの胸水を認める。"),
    ],
    "mosaic_attenuation_pattern": [
        ("A mosaic attenuation pattern is observed in both lungs (small airway disease?).",
         "両肺にモザイク状の濃度分布を認める(小気道病変?)。"),
        ("Mosaic attenuation is present in {where}.", "{where}にモザイクパターンを認める。"),
    ],
    "peribronchial_thickening": [
        ("Bilateral peribronchial thickening is observed.", "両側に気管支周囲の肥厚を認める。"),
        ("Bronchial wall thickening is present in {where}.", "{where}に気管支壁肥厚を認める。"),
    ],
    "consolidation": [
        ("A consolidation area with air bronchograms is observed in {lobe}.",
         "{lobe}に気管支透亮像を伴うコンソリデーションを認める。"),
        ("Patchy consolidation is present in {where}.", "{where}に斑状の浸潤影を認める。"),
    ],
    "bronchiectasis": [
        ("Cylindrical bronchiectasis is observed in {where}.", "{where}に円柱状気管支拡張を認める。"),
        ("{Deg} bronchiectatic changes are present in {lobe}.", "{lobe}に{deg}気管支拡張性変化を認める。"),
    ],
    "interlobular_septal_thickening": [
        ("Interlobular septal thickening is observed in {where}.", "{where}に小葉間隔壁肥厚を認める。"),
        ("Smooth thickening of the interlobular septa is present in both lungs.",
         "両肺に平滑な小葉間隔壁の肥厚を認める。"),
    ],
}

NEGATIVE: dict[str, list[tuple[str, str]]] = {
    "medical_material": [
        ("No catheter or other medical device is observed.", "カテーテルなどの医療機器は認めない。"),
    ],
    "cardiomegaly": [
        ("The heart is not enlarged.", "心拡大は認めない。"),
        ("Heart contour and size are normal.", "心臓の輪郭および大きさは正常である。"),
        ("No cardiomegaly was detected.", "心拡大なし。"),
    ],
    "pericardial_effusion": [
        ("Pericardial effusion-thickening was not observed.", "心嚢液貯留や心膜肥厚は認められない。"),
        ("There is no pericardial effusion.", "心嚢液貯留はない。"),
    ],
    "hiatal_hernia": [
        ("No hiatal hernia is seen.", "食道裂孔ヘルニアは認めない。"),
    ],
    "lymphadenopathy": [
        ("No enlarged lymph nodes in pathological size were detected in the mediastinum.",
         "縦隔に病的サイズの腫大リンパ節は検出されなかった。"),
        ("Millimetric lymph nodes below pathological size are observed in the mediastinum.",
         "縦隔に病的サイズ未満のミリ単位のリンパ節を認める。"),
        ("A {station} lymph node with a short axis of {small} mm is observed.",
         "{station}に短径{small}mmのリンパ節を認める。"),
        ("Mediastinal and hilar lymph nodes are not enlarged.", "縦隔および肺門リンパ節の腫大はない。"),
    ],
    "emphysema": [
        ("No emphysematous change is observed.", "気腫性変化は認められない。"),
    ],
    "atelectasis": [
        ("There is no atelectasis.", "無気肺はみられない。"),
    ],
    "lung_nodule": [
        ("No nodule or mass lesion was detected in both lungs.", "両肺に結節や腫瘤性病変は検出されなかった。"),
        ("No suspicious nodule is seen in the lung parenchyma.", "肺実質に疑わしい結節は認めない。"),
    ],
    "lung_opacity": [
        ("No ground glass opacity or infiltration was observed.", "すりガラス影や浸潤は認められなかった。"),
        ("Aeration of both lungs is normal and no infiltrative lesion is detected.",
         "両肺の含気は正常で、浸潤性病変は検出されない。"),
    ],
    "pulmonary_fibrotic_sequela": [
        ("No fibrotic or sequelae changes are seen.", "線維化や陳旧性変化はみられない。"),
    ],
    "pleural_effusion": [
        ("Pleural effusion-thickening was not detected.", "胸水や胸膜肥厚は検出されなかった。"),
        ("No pleural effusion is observed on either side.", "両側とも胸水は認めない。"),
    ],
    "mosaic_attenuation_pattern": [
        ("No mosaic attenuation pattern is observed.", "モザイクパターンは認めない。"),
    ],
    "peribronchial_thickening": [
        ("There is no peribronchial thickening.", "気管支周囲の肥厚はない。"),
    ],
    "consolidation": [
        ("No consolidation area was detected.", "コンソリデーションは検出されなかった。"),
        ("There is no consolidation in either lung.", "両肺ともに浸潤影はない。"),
    ],
    "bronchiectasis": [
        ("No bronchiectasis was detected.", "気管支拡張は検出されなかった。"),
    ],
    "interlobular_septal_thickening": [
        ("No interlobular septal thickening is observed.", "小葉間隔壁肥厚は認めない。"),
    ],
}

# Sentences about two findings: (col_a, col_b, label_a, label_b) -> templates.
COMBO: dict[tuple[str, str, int, int], list[tuple[str, str]]] = {
    ("arterial_wall_calcification", "coronary_artery_wall_calcification", 1, 1): [
        ("Calcific atheroma plaques are observed in the aorta and coronary arteries.",
         "大動脈および冠動脈に石灰化アテロームプラークを認める。"),
        ("Calcified atherosclerotic changes are present in the walls of the thoracic aorta and "
         "coronary arteries.", "胸部大動脈壁と冠動脈壁に石灰化を伴う動脈硬化性変化を認める。"),
    ],
    ("arterial_wall_calcification", "coronary_artery_wall_calcification", 1, 0): [
        ("Calcific atheroma plaques are observed in the aortic arch.", "大動脈弓部に石灰化プラークを認める。"),
        ("{Deg} atherosclerotic calcifications are present in the wall of the thoracic aorta.",
         "胸部大動脈壁に{deg}動脈硬化性石灰化を認める。"),
    ],
    ("arterial_wall_calcification", "coronary_artery_wall_calcification", 0, 1): [
        ("Calcified plaques are observed in the coronary arteries.", "冠動脈に石灰化プラークを認める。"),
        ("There is calcification in the left anterior descending coronary artery.",
         "左前下行枝に石灰化を認める。"),
    ],
    ("arterial_wall_calcification", "coronary_artery_wall_calcification", 0, 0): [
        ("No calcific plaque is observed in the aorta or coronary arteries.",
         "大動脈や冠動脈に石灰化プラークは認めない。"),
        ("Thoracic aorta diameter is normal.", "胸部大動脈径は正常である。"),
    ],
    ("pleural_effusion", "pericardial_effusion", 0, 0): [
        ("No pleural or pericardial effusion was detected.", "胸水や心嚢液貯留は検出されなかった。"),
    ],
    ("pleural_effusion", "pericardial_effusion", 1, 1): [
        ("There is {amount} pericardial and {side} pleural effusion.",
         "{amount}心嚢液貯留と{side}胸水を認める。"),
    ],
    ("pleural_effusion", "pericardial_effusion", 1, 0): [
        ("Pleural effusion is observed on the {side}, while no pericardial effusion is seen.",
         "{side}側に胸水を認めるが、心嚢液貯留は認めない。"),
    ],
    ("bronchiectasis", "peribronchial_thickening", 1, 1): [
        ("Tubular bronchiectasis and peribronchial thickening are observed in both lungs.",
         "両肺に円柱状気管支拡張と気管支周囲の肥厚を認める。"),
    ],
    ("lung_opacity", "consolidation", 1, 1): [
        ("Ground glass opacities and consolidation areas are observed in {where}.",
         "{where}にすりガラス影とコンソリデーションを認める。"),
    ],
    ("lung_opacity", "interlobular_septal_thickening", 1, 1): [
        ("Ground glass opacities accompanied by interlobular septal thickening (crazy paving) are "
         "seen in {where}.", "{where}に小葉間隔壁肥厚を伴うすりガラス影(crazy paving)を認める。"),
    ],
    ("emphysema", "lung_nodule", 0, 1): [
        ("There is no emphysema, but a {mm} mm nodule is observed in {lobe}.",
         "肺気腫は認めないが、{lobe}に{mm}mmの結節を認める。"),
    ],
    ("lung_nodule", "lung_opacity", 0, 0): [
        ("No mass, nodule or infiltration was detected in both lung parenchyma.",
         "両肺実質に腫瘤、結節、浸潤は検出されなかった。"),
    ],
}

IMPRESSION: dict[str, tuple[str, str]] = {
    "medical_material": ("Indwelling medical material (catheter, wires or stent).",
                         "医療材料の留置(カテーテル、ワイヤーまたはステント)。"),
    "arterial_wall_calcification": ("Aortic atherosclerosis.", "大動脈の動脈硬化性石灰化。"),
    "cardiomegaly": ("Cardiomegaly.", "心拡大。"),
    "pericardial_effusion": ("Pericardial effusion.", "心嚢液貯留。"),
    "coronary_artery_wall_calcification": ("Coronary artery calcification.", "冠動脈石灰化。"),
    "hiatal_hernia": ("Hiatal hernia.", "食道裂孔ヘルニア。"),
    "lymphadenopathy": ("Mediastinal lymphadenopathy.", "縦隔リンパ節腫大。"),
    "emphysema": ("Emphysema.", "肺気腫。"),
    "atelectasis": ("Atelectasis.", "無気肺。"),
    "lung_nodule": ("Pulmonary nodule(s).", "肺結節。"),
    "lung_opacity": ("Ground glass opacities.", "すりガラス影。"),
    "pulmonary_fibrotic_sequela": ("Fibrotic sequelae.", "線維性の陳旧性変化。"),
    "pleural_effusion": ("Pleural effusion.", "胸水。"),
    "mosaic_attenuation_pattern": ("Mosaic attenuation pattern.", "モザイクパターン。"),
    "peribronchial_thickening": ("Peribronchial thickening.", "気管支周囲肥厚。"),
    "consolidation": ("Consolidation.", "コンソリデーション。"),
    "bronchiectasis": ("Bronchiectasis.", "気管支拡張。"),
    "interlobular_septal_thickening": ("Interlobular septal thickening.", "小葉間隔壁肥厚。"),
}

NORMAL_IMPRESSION = [("No significant abnormality in the thorax.", "胸部に有意な異常所見なし。"),
                     ("Unremarkable chest CT.", "胸部CTで特記すべき所見なし。")]

# Label-neutral sentences that share words with findings (a thyroid "nodule" is not a
# lung nodule; a fatty liver "density decrease" is not a lung opacity).
DISTRACTOR = [("A {mm} mm calcified nodule is observed in the {side} lobe of the thyroid gland.",
               "甲状腺{side}葉に{mm}mmの石灰化結節を認める。"),
              ("A decrease in density consistent with steatosis is observed in the liver.",
               "肝臓に脂肪肝に一致する濃度低下を認める。")]

OPENING = [("Trachea and both main bronchi are open.", "気管および両主気管支は開存している。"),
           ("The trachea is midline and its lumen is patent.", "気管は正中に位置し、内腔は開存している。")]
ESOPHAGUS = [("Thoracic esophageal calibration is normal.", "胸部食道の口径は正常である。"),
             ("No wall thickening is seen in the thoracic esophagus.", "胸部食道に壁肥厚は認めない。")]
LUNG_WINDOW = [("When examined in the lung parenchyma window:", "肺野条件では、"),
               ("Lung parenchyma:", "肺野:")]
CLOSING = [("Upper abdominal organs included in the sections are normal.", "撮像範囲の上腹部臓器に異常はない。"),
           ("Bone structures in the study area are natural.", "撮像範囲の骨構造に異常はない。"),
           ("Vertebral corpus heights are preserved.", "椎体の高さは保たれている。"),
           ("No space-occupying lesion was detected in the liver.", "肝臓に占拠性病変は認めない。")]
CLINICAL = [("Not given.", "記載なし。"), ("Cough and fever.", "咳嗽と発熱。"), ("Dyspnea.", "呼吸困難。"),
            ("Routine follow-up.", "定期経過観察。"), ("Chest pain.", "胸痛。"),
            ("Smoker, screening.", "喫煙者、スクリーニング。")]
TECHNIQUE = [("Non-contrast images were taken in the axial plane with a section thickness of "
              "1.5 mm.",
              "スライス厚1.5mmで軸位断の非造影画像を撮像した。"),
             ("Non-contrast chest CT was performed with 1 mm sections.", "1mm厚の非造影胸部CTを施行した。")]
